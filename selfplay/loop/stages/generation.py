"""The generate stage: the current policy samples iteration k's prompts, shard by shard; and the
shard grouping that lets the learners score finished shards while later ones are sampled."""

from __future__ import annotations

from typing import Any

from selfplay.loop import faults
from selfplay.loop.rundir import write_parquet
from selfplay.loop.stages.context import Iteration, ReadyLearners, StageContext
from selfplay.loop.stages.cores import room_beside_generation
from selfplay.train.family import family_for


def generate(rt: StageContext, it: Iteration, prompts: list, pool, ready_learners: ReadyLearners) -> dict[str, Any]:
    """Iteration ``it``'s prompts sampled by ``pool`` shard by shard; ``ready_learners`` scores each finished
    shard's reference log-probs while later shards are sampled, where :func:`scored_by_shard` allows."""
    pool.expect_version(it.k)
    sampling = rt.sampling(seed=it.sample_seed)
    shards = -(-len(prompts) // rt.cfg.generation.shard_size)
    faults.hang_point("generate", it.k)
    kill = faults.shard_hook("generate", it.k)
    ahead = scored_by_shard(rt, it) and room_beside_generation(rt.cfg)
    with rt.progress(f"generate {len(prompts)} prompts x {sampling.n}", total=shards) as advance:

        def on_shard(index: int) -> None:
            advance()
            if kill is not None:
                kill(index)
            if ahead:
                _prescore_shard(rt, it, prompts, index, ready_learners)

        from selfplay.loop.prompt_source import generation_view

        completions, seconds = pool.generate(generation_view(prompts, rt.cfg.generation.prompt_template), sampling,
                                             shard_dir=it.dir / "generations", on_shard=on_shard)
    from selfplay.records import generations_table

    table = generations_table(prompts, completions, iteration=it.k, policy_version=it.k)
    write_parquet(it.dir / "generations.parquet", table)
    tokens = sum(len(t) for t in table.column("response_token_ids").to_pylist())
    info = {"prompts": len(prompts), "samples": table.num_rows, "tokens": tokens,
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
            "generator_threads": [i.get("threads") for i in pool.info()]}  # one entry per replica that ran
    if pool.last_run.get("unreadable"):  # damaged shards from an earlier attempt, generated again
        info["unreadable_shards"] = pool.last_run["unreadable"]
    if pool.last_run.get("restored"):  # generators Ray restarted mid-stage, and the shards they redid
        info.update(restored=pool.last_run["restored"], regenerated_shards=sorted(pool.last_run["attempts"]))
    return info


# Pairing strategies whose pairs hold (nearly) every sample: SPIN's `reference` (each sample is a rejected
# side) and `all_pairs`. The others use 1-2 of n samples, and scoring all n would cost more than it saves.
EVERY_SAMPLE = ("reference", "all_pairs")


def scored_by_shard(rt: StageContext, it: Iteration) -> bool:
    """Whether iteration ``it``'s reference pass scores its samples shard by shard (:func:`shard_groups`),
    and so can score each shard on the learners while the generators sample the next: when the
    reference is the weights the learners hold while generating (the previous policy) and the pairs
    are built from (nearly) every sample of this iteration (:data:`EVERY_SAMPLE`). A decision from the
    recipe alone, so a resumed run groups alike."""
    cfg = rt.cfg
    return (cfg.task.type != "pairs" and family_for(cfg.train.loss).needs_reference
            and cfg.pairing_strategy in EVERY_SAMPLE
            and (cfg.train.reference == "previous" or it.k == 0))


def shard_groups(rt: StageContext, it: Iteration, generations) -> list:
    """One table of (prompt, completion) sequences per generation shard (``records.reference_sequences``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    size = rt.cfg.generation.shard_size
    ids = generations.column("prompt_id").to_pylist()
    index = {pid: i // size for i, pid in enumerate(dict.fromkeys(ids))}  # prompt i is in shard i // size
    shard = pa.array([index[pid] for pid in ids])
    return [_shard_sequences(rt, generations.filter(pc.equal(shard, s)))
            for s in range(max(index.values(), default=-1) + 1)]


def _shard_sequences(rt: StageContext, generations):
    """One shard's sequences: both paths (ahead and in the stage) build a group here, so they agree."""
    from selfplay.records import reference_sequences

    return reference_sequences(generations, with_reference=rt.cfg.pairing_strategy == "reference")


def _prescore_shard(rt: StageContext, it: Iteration, prompts: list, index: int,
                    ready_learners: ReadyLearners) -> None:
    """Hand shard ``index``'s sequences to the learners, if they are up (never waits for them)."""
    learners = ready_learners()
    if learners is None:
        return
    from selfplay.generate.shards import read_shard, shard_path
    from selfplay.records import generations_table

    size = rt.cfg.generation.shard_size
    completions = read_shard(shard_path(it.dir / "generations", index))
    table = generations_table(prompts[index * size:(index + 1) * size], completions, iteration=it.k,
                              policy_version=it.k)
    learners.prescore(_shard_sequences(rt, table))
