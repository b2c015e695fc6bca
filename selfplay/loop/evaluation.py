"""Held-out evaluation of one policy's answers.

* ``accuracy``: the task verifier's mean score (only tasks with a verifier).
* ``mean_reward``: the run's judge scoring each answer alone (judges that need siblings skip it).
* ``win_rate``: against the *initial* policy's answers to the same prompts under the run's judge (or the
  verifier): each prompt's two answers form one group, a win counts 1, a tie 0.5.
The initial policy's answers are kept in ``initial/eval_generations.parquet`` so every iteration is
compared to the same baseline.
"""

from __future__ import annotations

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


def score_eval(rt, examples: list, responses: list[str], baseline: Path | None) -> tuple[dict[str, Any], pa.Table]:
    task, cfg = rt.task, rt.cfg
    result: dict[str, Any] = {}
    verifier_scores = [task.score(ex, r) for ex, r in zip(examples, responses)] if task.has_verifier else None
    if verifier_scores is not None:
        result["accuracy"] = _mean(verifier_scores)
    judge_scores: list[float | None] | None = None
    if cfg.judge is not None and cfg.judge.type in _SOLO_JUDGES:
        judge_scores = [s[0] for s in run_judge(rt.judge, _groups(examples, [[r] for r in responses]))]
        result["mean_reward"] = _mean(judge_scores)
    can_compare = verifier_scores is not None or cfg.judge is not None
    if baseline is not None and baseline.exists() and cfg.evaluation.win_rate and can_compare:
        result["win_rate"] = _win_rate(rt, examples, responses, baseline, verifier_scores)
    table = pa.Table.from_pylist([
        {"prompt_id": ex.id, "prompt": encode_prompt(ex.prompt), "reference": ex.reference, "response": r,
         "verifier_score": verifier_scores[i] if verifier_scores else None,
         "judge_score": judge_scores[i] if judge_scores else None}
        for i, (ex, r) in enumerate(zip(examples, responses))
    ])
    return result, table


def _win_rate(rt, examples, responses, baseline: Path, verifier_scores) -> float | None:
    base = {row["prompt_id"]: row for row in read_parquet(baseline).to_pylist()}
    keep = [i for i, ex in enumerate(examples) if ex.id in base]
    if not keep:
        return None
    if rt.cfg.judge is not None and rt.cfg.judge.type not in ("verifier",):
        groups = _groups([examples[i] for i in keep], [[responses[i], base[examples[i].id]["response"]] for i in keep])
        pairs = [(s[0], s[1]) for s in run_judge(rt.judge, groups)]
    else:
        pairs = [(verifier_scores[i], base[examples[i].id]["verifier_score"]) for i in keep]
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs if a is not None and b is not None]
    return sum(outcomes) / len(outcomes) if outcomes else None
