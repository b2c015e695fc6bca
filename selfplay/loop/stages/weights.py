"""The export and sync stages: the round's policy written out, then pushed into the generators."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from selfplay.loop import faults
from selfplay.loop.stages.context import GeneratorsAt, Iteration, StageContext


def export(it: Iteration, learners: Callable[[], Any]) -> dict[str, Any]:
    """The round's policy directory, which the train stage wrote; its checkpoints are dropped now.

    A run directory from before that change has the round in ``checkpoint/`` instead: loaded and
    written out here. Either way ``checkpoint/`` (the round's `checkpoint_every` checkpoints, of weights
    and optimizer state) goes once the policy is on disk: a round that finished never resumes."""
    ckpt = it.dir / "checkpoint"
    if not it.policy_out.is_dir():
        group = learners()  # started only here: a resumed run whose train stage wrote the policy needs none
        if group.holds != str(ckpt):  # resumed after a crash between train and export: the round's weights
            group.load_checkpoint(ckpt)
        group.save_hf(it.policy_out)  # atomic: written beside, then renamed into place
    shutil.rmtree(ckpt, ignore_errors=True)
    return {"policy": str(it.policy_out)}


def sync(rt: StageContext, it: Iteration, pool, learners, weight_sync: Callable[[], Any],
         generators: GeneratorsAt) -> dict[str, Any]:
    """The exported policy into the generators: pushed through the configured sync (``weight_sync()``),
    verified on a probe. With an adapter-only LoRA sync (``sync.lora``) only the adapter moves, plus the
    learner's base when the generators do not hold it yet (``lora_parts``; docs/lora.md says when). With no
    pool running (``pool`` None: a resumed run) the generators start on the exported policy instead."""
    if pool is None:
        return start_generators(it, generators)
    if rt.cfg.adapter_sync:
        from selfplay.sync.base import lora_parts

        base = learners.lora_base()
        parts = lora_parts(base, pool.policy.base, rt.cfg.train.reference)
        report = weight_sync().push(learners, pool, it.version, parts)
    else:
        report = weight_sync().push(learners, pool, it.version)
    faults.kill_point("sync", it.k)  # crash tests: generators hold the new weights, the manifest does not say so
    return {"version": it.version, **report.as_dict()}


def start_generators(it: Iteration, generators: GeneratorsAt) -> dict[str, Any]:
    """No generators run in this process (resumed): start them directly on the exported policy."""
    generators(it.policy_out, it.version)
    faults.kill_point("sync", it.k)
    return {"version": it.version, "method": "load from disk (resumed)"}
