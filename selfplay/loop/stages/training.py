"""The train stage: one training round on the iteration's pairs, its summary and its rejected drift."""

from __future__ import annotations

from typing import Any

from selfplay.config.schema import EvalConfig
from selfplay.loop import faults
from selfplay.loop.manifest import Stage, TrainRecord
from selfplay.loop.rundir import read_parquet
from selfplay.loop.stages.context import Iteration, StageContext
from selfplay.loop.stages.metrics_log import round_metrics, trim_metrics
from selfplay.train.family import family_for


def train(rt: StageContext, it: Iteration, learners) -> TrainRecord:
    table = read_parquet(it.dir / "reference.parquet")
    learners.set_counters(*rounds_before(rt, it.k))  # numbered by the run, not by this learner process's history
    ckpt = it.dir / "checkpoint"
    position = 0
    if (ckpt / "latest").exists():  # a round interrupted after a checkpoint: continue it, don't restart
        position = int((learners.load_checkpoint(ckpt).get("round") or {}).get("position", 0))
    trim_metrics(it.dir / "train_metrics.jsonl", position)
    learners.set_metrics_dir(it.dir)
    faults.watch_lines("train", it.k, it.dir / "train_metrics.jsonl")
    steps = -(-table.num_rows // (rt.cfg.train.micro_batch_size * rt.cfg.train.gradient_accumulation_steps
                                  * rt.cfg.resources.learners)) * rt.cfg.train.epochs
    with rt.progress(f"train {rt.cfg.train.loss.type} on {table.num_rows} pairs", total=steps,
                     watch_lines=it.dir / "train_metrics.jsonl"):
        summary = learners.train_round(table, rt.cfg.train.for_iteration(it.k), checkpoint_dir=ckpt,
                                       final_checkpoint=False)
    info = {key: summary[key] for key in ("steps", "kept", "dropped", "truncated", "resumed_at_step",
                                          "trainable_params", "total_params") if key in summary}
    info.update(round_metrics(it.dir / "train_metrics.jsonl"))
    info.update(rejected_drift(learners, table, rt.cfg.train, rt.cfg.evaluation.drift_samples))
    # The round's weights are saved as the iteration's policy, not as a DeepSpeed checkpoint: the next
    # round starts with fresh AdamW moments, so an end-of-round checkpoint would write twice the weights'
    # bytes of optimizer state that nothing reads (about 12 bytes a parameter in fp32, an iteration). A
    # crash before this stage is marked retrains the round, from its last `checkpoint_every` checkpoint if any.
    learners.save_hf(it.policy_out)  # atomic: written beside, then renamed into place
    return TrainRecord.model_validate({**info, "policy": str(it.policy_out)})


def rounds_before(rt: StageContext, k: int) -> tuple[int, int]:
    """(rounds, optimizer steps) the learner has run before iteration ``k``'s round, read from the manifest:
    the warm start, then each earlier iteration that trained. A learner restarted by a resume numbers its
    round and steps as an uninterrupted one would, so the step logs of both runs are the same."""
    prepare = rt.rd.manifest.prepare
    warm = (prepare.warmstart if prepare is not None else None) or {}
    rounds, steps = (1, int(warm.get("steps", 0))) if warm else (0, 0)
    for j in range(k):
        record = rt.rd.stage_record(j, Stage.TRAIN)
        assert isinstance(record, TrainRecord)
        done = record.steps
        rounds, steps = rounds + (done > 0), steps + done
    return rounds, steps


def rejected_drift(learners, table, cfg, samples: int = EvalConfig.model_fields["drift_samples"].default
                   ) -> dict[str, Any]:
    """How far the round moved the policy on its rejected responses: mean(log pi_ref(y) - log pi_new(y)).

    Not a KL estimate: the rejected responses are *selected* (the worst of n samples, or another policy's
    samples), not draws from the reference, so their mean log-ratio is biased in an unknown direction.
    It is reported as what it is, a drift of the rejected side (positive: the round pushed them down).

    A diagnostic, so it is kept cheap: at most ``samples`` (``evaluation.drift_samples``; 0: not measured)
    rejected samples, spread evenly over the table, scored alone. Scoring every pair on both sides costs
    as much as the reference stage (``python -m bench.iteration`` prints both stages' seconds).
    """
    if samples == 0 or not family_for(cfg.loss).needs_reference or "ref_rejected_logps" not in table.column_names:
        return {}
    sampled = [i for i, ids in enumerate(table.column("rejected_token_ids").to_pylist()) if ids is not None]
    if not sampled:
        return {}
    if len(sampled) > samples:
        sampled = [sampled[(j * len(sampled)) // samples] for j in range(samples)]
    after = learners.compute_reference(table.take(sampled), as_reference=False,  # TDPO keeps its reference
                                       only_rejected=True)
    before = table.take(sampled).column("ref_rejected_logps").to_pylist()
    now = after.column("ref_rejected_logps").to_pylist()
    diffs = [b - a for b, a in zip(before, now) if b is not None and a is not None]
    return {"rejected_drift": sum(diffs) / len(diffs)} if diffs else {}
