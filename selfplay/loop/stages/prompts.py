"""Iteration k's training prompts, sampled from the task (or read from ``generation.prompt_source``)."""

from __future__ import annotations

import random
from typing import Any

from selfplay.loop.prompt_source import iteration_prompts
from selfplay.loop.stages.context import StageContext


def sample_prompts(rt: StageContext, k: int) -> list:
    """Iteration k's training prompts: slice k of a seeded permutation of the task's training split,
    so iterations see disjoint prompts until the split is used up (then it wraps around).
    ``generation.prompt_source`` `fixed`/`files` are ``prompt_source.iteration_prompts``."""
    if (chosen := iteration_prompts(rt, k)) is not None:
        return chosen
    per_iter = rt.cfg.generation.prompts_per_iteration
    pool = rt.task.train_examples(None, seed=rt.cfg.seed)
    if not pool:
        raise ValueError("the task returned no training prompts")
    order = list(range(len(pool)))
    random.Random(rt.cfg.seed).shuffle(order)
    start = (k * per_iter) % len(pool)
    return [pool[order[(start + i) % len(pool)]] for i in range(min(per_iter, len(pool)))]


def examples_by_id(examples) -> dict[str, Any]:
    return {ex.id: ex for ex in examples}
