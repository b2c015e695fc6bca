"""The judge stage: every sample scored by the configured judge."""

from __future__ import annotations

from typing import Any

from selfplay.loop.rundir import read_parquet, write_parquet
from selfplay.loop.stages.context import Iteration, StageContext
from selfplay.loop.stages.prompts import examples_by_id, sample_prompts


def judge(rt: StageContext, it: Iteration, judge) -> dict[str, Any]:
    from selfplay.judges import judge_table

    generations = read_parquet(it.dir / "generations.parquet")
    examples = examples_by_id(sample_prompts(rt, it.k))
    with rt.progress(f"judge {generations.num_rows} samples ({rt.cfg.judge.type})"):
        judgments, stats = judge_table(generations, judge, examples)
    write_parquet(it.dir / "judgments.parquet", judgments)
    return stats
