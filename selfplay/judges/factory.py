"""``build_judge``: the configured judge, built by one explicit if/elif over ``judge.type``.

Every judge built here runs in this process; where it runs is not this package's choice. The run's
factory (``selfplay.loop.factory``) hosts model judges (``reward_model``, ``pairwise``) in a Ray actor
(``actors/judge.py``, which calls this function inside the actor) and gives the ``llm_judge`` a
generator pool of its own. The ``llm_judge`` needs something that completes text: a
``complete(list[str]) -> list[str]`` callable, or an ``engine`` with the generator API
(``generate(prompts, sampling)``) serving ``judge.path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.judges.base import Judge
from selfplay.judges.llm_judge import Complete, LLMJudge, engine_complete
from selfplay.judges.rules import SFTJudge, VerifierJudge


def build_judge(
    cfg: Any,
    task: Any = None,
    *,
    engine: Any = None,
    complete: Complete | None = None,
) -> Judge:
    """The judge for ``cfg`` (a ``JudgeConfig``). ``task`` is needed by ``verifier`` only."""
    kind = cfg.type
    if kind == "verifier":
        return VerifierJudge(task)
    if kind == "sft":
        return SFTJudge()
    if kind in ("reward_model", "pairwise"):
        if kind == "reward_model":
            from selfplay.judges.reward_model import RewardModelJudge

            return RewardModelJudge(cfg.path, batch_size=cfg.batch_size, max_length=cfg.max_length)
        from selfplay.judges.pairwise import PairwiseJudge

        return PairwiseJudge(cfg.path, batch_size=cfg.batch_size, max_length=cfg.max_length, overflow=cfg.overflow,
                             include_self=cfg.include_self)
    if kind == "llm_judge":
        if complete is None:
            if engine is None:
                raise ValueError(f"judge.type 'llm_judge' needs an engine serving {cfg.path!r} "
                                 "or a complete(list[str]) callable")
            complete = engine_complete(engine, max_tokens=cfg.max_tokens)
        return LLMJudge(complete, template=cfg.template, both_orders=cfg.both_orders,
                        name=f"llm_judge:{Path(cfg.path).name}")
    if kind == "python":
        from selfplay.judges.python_judge import PythonJudge

        return PythonJudge(cfg.target, cfg.kwargs)
    raise ValueError(f"judge.type: unknown judge {kind!r}")
