"""The prepare stage: the starting policy (a preset built offline, or a local checkpoint), its warm
start and its evaluation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfplay.loop.stages.context import GeneratorsAt, LearnersAt, StageContext, initial_policy
from selfplay.loop.stages.held_out import evaluate_policy


def prepare(rt: StageContext, *, generators: GeneratorsAt, learners: LearnersAt,
            start_generators: Callable[[Path, int], None], start_learners: Callable[[Path], None],
            judge: Callable[[], Any], iterations_follow: bool = True) -> dict[str, Any]:
    """The starting policy (a preset built offline, or a local checkpoint), its warm start, its eval.

    The actors the stage does not wait on start beside it (``start_generators``, ``start_learners``:
    in the background; ``generators``, ``learners`` wait for them): with a warm start, the generators start
    on the base policy while the learners fine-tune, and load the result (verified, like a sync) before the
    evaluation; without one, the learners start while the generators evaluate (when iterations follow)."""
    from selfplay.models import build_policy, check_model_dir

    cfg = rt.cfg
    target = rt.rd.initial_dir / "policy"
    if cfg.policy.preset is not None:
        base = build_policy(rt.rd.initial_dir / "base", preset=cfg.policy.preset, tokenizer=cfg.policy.tokenizer,
                            seed=cfg.seed, overwrite=True)
    else:
        base = check_model_dir(cfg.policy.path)
    info: dict[str, Any] = {}
    if cfg.policy.warmstart is not None:
        ws = cfg.policy.warmstart
        from selfplay.records import encode_prompt

        pool = rt.task.train_examples(None, seed=cfg.seed)
        rows = [{"prompt": encode_prompt(ex.prompt), "reference": ex.reference} for ex in pool[: ws.examples]
                if ex.reference is not None]
        if not rows:
            raise ValueError("policy.warmstart: the task has no reference answers to fine-tune on")
        early_generators = iterations_follow or cfg.evaluation.num_prompts > 0
        if early_generators:
            start_generators(base, 0)  # they load the warm-started policy below
        group = learners(base)
        group.set_metrics_dir(rt.rd.initial_dir)
        steps = -(-len(rows) // (ws.micro_batch_size * cfg.resources.learners)) * ws.epochs
        with rt.progress(f"warm start: SFT on {len(rows)} reference answers", total=steps,
                         watch_lines=rt.rd.initial_dir / "train_metrics.jsonl"):
            summary = group.sft_round(rows, ws)
        info["warmstart"] = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
        group.save_hf(target)  # atomic: written beside, then renamed into place
        if early_generators:
            generators(base, 0).load_dir(target, 0)  # version 0 is the warm-started policy
        rt.rd.manifest.initial_policy = str(target)
    else:
        if iterations_follow:
            start_learners(base)  # iteration 0 starts from ``base``: set up while the evaluation runs
        rt.rd.manifest.initial_policy = str(base)
    rt.rd.save()
    info.update(evaluate_policy(rt, initial_policy(rt), version=0, out_dir=rt.rd.initial_dir, generators=generators,
                                judge=judge))
    return info
