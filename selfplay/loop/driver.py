"""The self-play loop, read top to bottom.

``run`` opens (or resumes) a run directory, prepares the starting policy, then repeats
``run_iteration``: sample prompts -> generate -> judge -> build pairs -> reference log-probs -> train
-> export -> sync -> evaluate -> commit. Each stage is one named call in :mod:`selfplay.loop.stages`
that reads the previous stage's artifact from disk and writes its own atomically; the manifest records
it as done only after that. Resuming is therefore just skipping the stages the manifest lists, and
an interrupted run never mixes records from two attempts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfplay.config import RunConfig
from selfplay.loop import stages
from selfplay.loop.preflight import preflight
from selfplay.loop.rundir import RunDir
from selfplay.loop.runtime import Runtime, open_run_dir


def run(cfg: RunConfig, run_dir: str | Path, *, console=None, source: str = "<recipe>") -> RunDir:
    """Run (or resume) every iteration of ``cfg`` in ``run_dir``."""
    checked = preflight(cfg, source)
    rd = open_run_dir(cfg, run_dir)
    with Runtime(cfg, rd, console=console, task=checked.task) as rt:
        _start(rt, checked.warnings)
        if not rd.manifest.get("prepared"):
            _stage(rt, "prepare", lambda: stages.prepare(rt))
        for k in range(rd.next_iteration(), cfg.iterations):
            if rd.manifest.get("stopped_early"):
                break
            run_iteration(rt, k)
            stop_if_solved(rt, k)
        rt.summary()
    return rd


def prepare_only(cfg: RunConfig, run_dir: str | Path, *, console=None, source: str = "<recipe>") -> RunDir:
    """Build (and warm-start) the starting policy and evaluate it; no iteration runs."""
    checked = preflight(cfg, source)
    rd = open_run_dir(cfg, run_dir)
    with Runtime(cfg, rd, console=console, task=checked.task) as rt:
        _start(rt, checked.warnings)
        if not rd.manifest.get("prepared"):
            _stage(rt, "prepare", lambda: stages.prepare(rt))
    return rd


def _start(rt: Runtime, warnings: list[str]) -> None:
    rt.rd.clear_failure()
    for warning in warnings:
        rt.log(f"warning: {warning}")
    for line in rt.rd.resume_notes():
        rt.log(line)


def run_iteration(rt: Runtime, k: int) -> None:
    """One self-play iteration; stages already recorded in the manifest are skipped."""
    rt.log(f"iteration {k}")
    _stage(rt, "generate", lambda: stages.generate(rt, k, stages.sample_prompts(rt, k)), k)
    _stage(rt, "judge", lambda: stages.judge(rt, k), k)
    _stage(rt, "pairs", lambda: stages.build_pairs(rt, k), k)
    _stage(rt, "reference", lambda: stages.reference_logps(rt, k), k)
    _stage(rt, "train", lambda: stages.train(rt, k), k)
    _stage(rt, "export", lambda: stages.export(rt, k), k)
    _stage(rt, "sync", lambda: stages.sync(rt, k), k)
    _stage(rt, "evaluate", lambda: stages.evaluate(rt, k), k)
    rt.rd.mark_complete(k, policy_version=k + 1)


def stop_if_solved(rt: Runtime, k: int) -> None:
    """Record an early stop when iteration ``k`` solved ``stop_when_solved`` of its training prompts."""
    threshold = rt.cfg.stop_when_solved
    solved = stages.solved_share(rt, k)
    if threshold is None or solved is None or solved < threshold:
        return
    rt.rd.manifest["stopped_early"] = {"after_iteration": k, "solved_share": round(solved, 4),
                                       "threshold": threshold}
    rt.rd.save()
    rt.log(f"stopping early: iteration {k} solved {solved:.1%} of its training prompts (>= {threshold:.0%})")


def _stage(rt: Runtime, name: str, fn: Callable[[], dict[str, Any] | None], k: int | None = None) -> None:
    if k is not None and rt.rd.stage_done(k, name):
        rt.log(f"  {name}: done earlier, skipped")
        return
    start = time.perf_counter()
    with rt.stage_context(name, k):
        info = fn() or {}
    seconds = time.perf_counter() - start
    if k is None:
        rt.rd.manifest["prepared"] = True
        rt.rd.manifest["prepare"] = {**info, "seconds": round(seconds, 3)}
        rt.rd.save()
    else:
        rt.rd.mark_stage(k, name, seconds, info)
    rt.log(f"  {name}: {seconds:.1f}s {stages.brief(info)}")
