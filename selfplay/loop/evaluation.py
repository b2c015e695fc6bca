"""Held-out evaluation of one policy's answers.

* ``accuracy``: the task verifier's mean score (only tasks with a verifier).
* ``mean_reward``: the run's judge scoring each answer alone (judges that need siblings skip it).
* ``win_rate``: against the *initial* policy's answers to the same prompts under the run's judge (or the
  verifier): each prompt's two answers form one group, a win counts 1, a tie 0.5.
* with ``evaluation.k``: ``pass@k``, ``pass@1`` and ``maj@k`` over ``k`` sampled answers per prompt
  (:func:`sampled_metrics`), beside the greedy answer that ``accuracy`` and ``win_rate`` score.
The initial policy's answers are kept in ``initial/eval_generations.parquet`` so every iteration is
compared to the same baseline.

Choices for the sampled metrics:

* "Correct" is a verifier score of exactly 1: a partial-credit score (reasoning-gym's, say 0.5) is
  not a solved problem, and pass@k asks for one.
* ``pass@k`` is the unbiased estimator of Chen et al. 2021 (HumanEval), ``1 - C(n-c, k) / C(n, k)`` for
  ``c`` correct of ``n`` samples, computed as a product (no huge binomials) and averaged over prompts.
  With ``n == k`` samples it is the share of prompts with at least one correct sample; :func:`pass_at_k`
  takes any ``n >= k``.
* ``maj@k`` votes on the extracted answers: a task may define ``extract_answer(response) -> str | None``
  (so ``0.5`` and ``1/2`` from a math grader can be told apart or not, as the task decides); otherwise
  the stripped response is the answer. A sample with no answer (``None``) does not vote; a tie goes to
  the answer sampled first. The prompt counts as solved when that answer's first sample is correct.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from selfplay.judges.base import PromptGroup, run_judge
from selfplay.loop.rundir import read_parquet
from selfplay.records import encode_prompt

_SOLO_JUDGES = {"verifier", "sft", "reward_model", "python"}


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _groups(examples: list, answers: list[list[str]]) -> list[PromptGroup]:
    return [PromptGroup(ex.id, ex.prompt, list(a), ex.reference, dict(ex.meta or {}))
            for ex, a in zip(examples, answers)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. 2021's unbiased pass@k for ``c`` correct of ``n`` samples: ``1 - C(n-c, k) / C(n, k)``,
    as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (stable for large ``n``)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def answer_of(task, response: str) -> str | None:
    """The answer a sample votes for: the task's ``extract_answer`` if it has one, else the stripped text."""
    extract = getattr(task, "extract_answer", None)
    if not callable(extract):
        return response.strip()
    answer = extract(response)
    return None if answer is None else str(answer)


def majority(answers: list[str | None]) -> int | None:
    """Index of the first sample of the most common answer (ties: the answer sampled first); None when no
    sample has an answer."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(i for i, a in enumerate(answers) if a is not None and votes[a] == top)


def sampled_metrics(scores: list[list[float]], answers: list[list[str | None]], k: int) -> dict[str, float]:
    """``pass@k``, ``pass@1`` and ``maj@k`` over prompts, from each prompt's sample scores and answers."""
    if not scores:
        return {}
    correct = [[s == 1.0 for s in row] for row in scores]
    passes = [pass_at_k(len(row), sum(row), k) for row in correct]
    firsts = [sum(row) / len(row) for row in correct]
    votes = [majority(a) for a in answers]
    maj = [v is not None and row[v] for v, row in zip(votes, correct)]
    n = len(scores)
    return {"pass@k": sum(passes) / n, "pass@1": sum(firsts) / n, "maj@k": sum(maj) / n}


def score_eval(rt, judge: Callable[[], Any], examples: list, responses: list[str], baseline: Path | None,
               samples: list[list[str]] | None = None) -> tuple[dict[str, Any], pa.Table]:
    """Score the answers (one per prompt) and, with ``evaluation.k``, each prompt's ``samples``; returns
    eval.json's numbers and the table of ``eval_generations.parquet``. ``judge()`` is called only where the
    recipe's judge scores or compares answers."""
    task, cfg = rt.task, rt.cfg
    result: dict[str, Any] = {}
    verifier_scores = [task.score(ex, r) for ex, r in zip(examples, responses)] if task.has_verifier else None
    if verifier_scores is not None:
        result["accuracy"] = _mean(verifier_scores)
    judge_scores: list[float | None] | None = None
    if cfg.judge is not None and cfg.judge.type in _SOLO_JUDGES:
        judge_scores = [s[0] for s in run_judge(judge(), _groups(examples, [[r] for r in responses]))]
        result["mean_reward"] = _mean(judge_scores)
    can_compare = verifier_scores is not None or cfg.judge is not None
    if baseline is not None and baseline.exists() and cfg.evaluation.win_rate and can_compare:
        result["win_rate"] = _win_rate(rt, judge, examples, responses, baseline, verifier_scores)
    rows = [{"prompt_id": ex.id, "prompt": encode_prompt(ex.prompt), "reference": ex.reference, "response": r,
             "verifier_score": verifier_scores[i] if verifier_scores else None,
             "judge_score": judge_scores[i] if judge_scores else None}
            for i, (ex, r) in enumerate(zip(examples, responses))]
    if samples is not None:
        if not task.has_verifier:
            raise ValueError("evaluation.k: pass@k and maj@k need a task with a verifier; unset evaluation.k")
        scores = [[task.score(ex, s) for s in texts] for ex, texts in zip(examples, samples)]
        answers = [[answer_of(task, s) for s in texts] for texts in samples]
        result.update({"k": cfg.evaluation.k, **sampled_metrics(scores, answers, cfg.evaluation.k)})
        for row, texts, sc, an in zip(rows, samples, scores, answers):
            row.update(samples=list(texts), sample_scores=sc, sample_answers=an)
    return result, pa.Table.from_pylist(rows)


def _win_rate(rt, judge: Callable[[], Any], examples, responses, baseline: Path, verifier_scores) -> float | None:
    base = {row["prompt_id"]: row for row in read_parquet(baseline).to_pylist()}
    keep = [i for i, ex in enumerate(examples) if ex.id in base]
    if not keep:
        return None
    if rt.cfg.judge is not None and rt.cfg.judge.type not in ("verifier",):
        groups = _groups([examples[i] for i in keep], [[responses[i], base[examples[i].id]["response"]] for i in keep])
        pairs = [(s[0], s[1]) for s in run_judge(judge(), groups)]
    else:
        pairs = [(verifier_scores[i], base[examples[i].id]["verifier_score"]) for i in keep]
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs if a is not None and b is not None]
    return sum(outcomes) / len(outcomes) if outcomes else None
