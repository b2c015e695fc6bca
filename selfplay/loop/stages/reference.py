"""The reference stage: reference log-probs for every pair, computed once and stored beside the pairs."""

from __future__ import annotations

from typing import Any

from selfplay.loop.rundir import read_parquet, write_parquet
from selfplay.loop.stages.context import Iteration, StageContext, initial_policy
from selfplay.loop.stages.generation import scored_by_shard, shard_groups
from selfplay.train.family import family_for


def reference_logps(rt: StageContext, it: Iteration, learners) -> dict[str, Any]:
    """Reference log-probs for every pair, computed once and stored beside the pairs."""
    from selfplay.records import pop_prescored

    pairs = read_parquet(it.dir / "pairs.parquet")
    if not family_for(rt.cfg.train.loss).needs_reference:
        write_parquet(it.dir / "reference.parquet", pairs)
        return {"skipped": "reference-free loss"}
    # `previous`: the weights the learner holds now (iteration k-1's policy). `initial`: loaded from disk.
    ref_dir = initial_policy(rt) if rt.cfg.train.reference == "initial" and it.k > 0 else None
    groups = shard_groups(rt, it, read_parquet(it.dir / "generations.parquet")) if scored_by_shard(rt, it) else None
    table, prescored = pop_prescored(learners.compute_reference(pairs, model_path=ref_dir, groups=groups))
    write_parquet(it.dir / "reference.parquet", table)
    info = {"reference": rt.cfg.train.reference, "pairs": table.num_rows}
    if prescored is not None:  # shards scored on the learners while the generators sampled later ones
        info["prescored_shards"] = prescored
    return info
