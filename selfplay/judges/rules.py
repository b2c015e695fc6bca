"""Rule judges that need no model: the task's verifier, and SPIN's reference-vs-sample rule.

* ``VerifierJudge`` calls ``task.score(example, response)`` for each sample: 0/1 for an exact answer,
  a fraction for a graded task. The example is rebuilt from the group (id, prompt, reference, meta), so
  the verifier sees what the task produced. The verifier contract is a score in [0, 1] or ``None``
  (undecided: the sample takes part in no pair); anything else (above 1, negative, not a number) is a
  ``JudgeError`` naming the task, the prompt and the value, and a NaN is refused by ``run_judge``.
  A task with ``grader_counts()`` (dataset graders, reasoning-gym) scores an answer its grader failed on
  (raised, timed out) as 0 and counts it; the judge's ``stats`` give the counts of its last ``score`` call
  (``grader_errors``, ``grader_timeouts``), so the judge stage records them per iteration.
* ``SFTJudge`` (SPIN) scores a sample 1.0 when it equals the reference after whitespace normalisation
  and 0.0 otherwise; the ``reference`` pairing strategy then makes (reference, sample) pairs from the
  0.0 samples only, so a sample identical to the reference never becomes a "rejected" copy of it.
"""

from __future__ import annotations

from typing import Any

from selfplay.judges.base import JudgeError, PromptGroup, Scores

IDENTICAL, DIFFERENT = 1.0, 0.0


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return " ".join(text.split())


class VerifierJudge:
    """Scores each response with the task's own rule."""

    name = "verifier"

    def __init__(self, task: Any) -> None:
        if task is None or not getattr(task, "has_verifier", False):
            kind = type(task).__name__ if task is not None else "None"
            raise ValueError(f"judge.type 'verifier' needs a task with a verifier; {kind} has none")
        self.task = task
        self.stats: dict[str, int] = {}

    def score(self, groups: list[PromptGroup]) -> Scores:
        from selfplay.tasks.base import Example

        before = self._grader_counts()
        out: Scores = []
        for g in groups:
            example = Example(id=g.prompt_id, prompt=g.prompt, reference=g.reference, meta=dict(g.meta))
            out.append([self._check(self.task.score(example, r), g.prompt_id) for r in g.responses])
        after = self._grader_counts()
        self.stats = {k: v - before.get(k, 0) for k, v in after.items()}
        return out

    def _grader_counts(self) -> dict[str, int]:
        counts = getattr(self.task, "grader_counts", None)
        return dict(counts()) if callable(counts) else {}

    def _check(self, value: Any, prompt_id: str) -> float | None:
        if value is None:
            return None
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise JudgeError(f"{type(self.task).__name__}.score on prompt {prompt_id!r} returned {value!r}; "
                             "expected a float in [0, 1] or None") from None
        if not 0.0 <= score <= 1.0 and score == score:  # NaN passes here; run_judge names it
            raise JudgeError(f"{type(self.task).__name__}.score on prompt {prompt_id!r} returned {score}; "
                             "a verifier score must be in [0, 1] (or None: undecided)")
        return score


class SFTJudge:
    """SPIN's judge: 1.0 for a sample identical to the reference, 0.0 for one that differs."""

    name = "sft"

    def score(self, groups: list[PromptGroup]) -> Scores:
        out: Scores = []
        for g in groups:
            if g.reference is None:
                raise ValueError("the sft judge needs a reference answer; this prompt has none")
            ref = normalize_whitespace(g.reference)
            out.append([IDENTICAL if normalize_whitespace(r) == ref else DIFFERENT for r in g.responses])
        return out
