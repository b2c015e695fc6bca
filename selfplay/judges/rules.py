"""Rule judges that need no model: the task's verifier, and SPIN's reference-vs-sample rule.

* ``VerifierJudge`` calls ``task.score(example, response)`` for each sample: 0/1 for an exact answer,
  a fraction for a graded task. The example is rebuilt from the group (id, prompt, reference, meta), so
  the verifier sees what the task produced.
* ``SFTJudge`` (SPIN) scores a sample 1.0 when it equals the reference after whitespace normalisation
  and 0.0 otherwise; the ``reference`` pairing strategy then makes (reference, sample) pairs from the
  0.0 samples only, so a sample identical to the reference never becomes a "rejected" copy of it.
"""

from __future__ import annotations

from typing import Any

from selfplay.judges.base import PromptGroup, Scores

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

    def score(self, groups: list[PromptGroup]) -> Scores:
        from selfplay.tasks.base import Example

        out: Scores = []
        for g in groups:
            example = Example(id=g.prompt_id, prompt=g.prompt, reference=g.reference, meta=dict(g.meta))
            out.append([self._checked(self.task.score(example, r), g.prompt_id) for r in g.responses])
        return out

    def _checked(self, value: Any, prompt_id: str) -> float:
        """A verifier score is a number in [0, 1]: 3.0 would inflate accuracy, a string is a bug."""
        import math
        from numbers import Real

        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1
        if not ok:
            raise ValueError(f"{type(self.task).__name__}.score returned {value!r} for prompt {prompt_id!r}; "
                             "a verifier score is a float in [0, 1]")
        return float(value)


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
