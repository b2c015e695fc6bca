"""The self-play loop, read top to bottom.

``run`` opens (or resumes) a run directory, prepares the starting policy, then repeats
``run_iteration``: sample prompts -> generate -> judge -> build pairs -> reference log-probs -> train
-> export -> sync -> evaluate -> commit. Each stage is one named call in :mod:`selfplay.loop.stages`
that reads the previous stage's artifact from disk and writes its own atomically; the manifest records
it as done only after that. Resuming is therefore just skipping the stages the manifest lists, and
an interrupted run never mixes records from two attempts.

A driver owns its run directory (:mod:`selfplay.loop.ownership`) before it reads or writes anything in
it, and holds it until it exits: a second driver on the same directory is refused before any work, a
crashed owner is taken over, and a driver that lost the run stops before its next write.

The driver picks the stage list: offline pairs (``task.type: pairs``) read their pairs instead of
generating and judging, and an iteration that built no pairs keeps its policy unchanged instead of
training. Each stage gets its :class:`~selfplay.loop.stages.Iteration` and the parts it uses, built on
first use inside the stage's call (a skipped stage starts nothing).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selfplay.config import RunConfig
from selfplay.loop import stages
from selfplay.loop.manifest import PrepareRecord, Record, Stage, StoppedEarly
from selfplay.loop.ownership import Ownership, hold
from selfplay.loop.preflight import preflight
from selfplay.loop.rundir import RunDir
from selfplay.loop.runtime import Runtime, open_run_dir


def run(cfg: RunConfig, run_dir: str | Path, *, console=None, source: str = "<recipe>",
        take_over: bool = False) -> RunDir:
    """Run (or resume) every iteration of ``cfg`` in ``run_dir`` (``take_over``: take a stale owner's run)."""
    with _owned(cfg, run_dir, console, source, take_over) as rt:
        if not rt.rd.manifest.prepared:
            _stage(rt, Stage.PREPARE, lambda: prepare(rt))
        for k in range(rt.rd.next_iteration(), cfg.iterations):
            if rt.rd.manifest.stopped_early is not None:
                break
            run_iteration(rt, k)
            stop_if_solved(rt, k)
        rt.summary()
    return rt.rd


def prepare_only(cfg: RunConfig, run_dir: str | Path, *, console=None, source: str = "<recipe>",
                 take_over: bool = False) -> RunDir:
    """Build (and warm-start) the starting policy and evaluate it; no iteration runs."""
    with _owned(cfg, run_dir, console, source, take_over) as rt:
        if not rt.rd.manifest.prepared:
            _stage(rt, Stage.PREPARE, lambda: prepare(rt, iterations_follow=False))
    return rt.rd


@contextlib.contextmanager
def _owned(cfg: RunConfig, run_dir: str | Path, console, source: str, take_over: bool) -> Iterator[Runtime]:
    """The run directory owned (first: a second driver is refused before any work), the recipe checked,
    the run directory opened and its runtime started."""
    with hold(run_dir, take_over=take_over) as owner:
        checked = preflight(cfg, source)
        rd = open_run_dir(cfg, run_dir)
        with Runtime(cfg, rd, console=console, task=checked.task) as rt:
            _start(rt, checked.warnings, owner)
            yield rt


def _start(rt: Runtime, warnings: list[str], owner: Ownership) -> None:
    if owner.took_over is not None:
        rt.rd.log_takeover(owner.took_over)
        previous = owner.took_over["previous"]
        rt.log(f"took the run over from pid {previous['pid']} on host {previous['host']} "
               f"({owner.took_over['reason']}); logged in the manifest under takeovers")
    rt.rd.clear_failure()
    leftovers = rt.rd.remove_leftovers()
    if leftovers:
        rt.log(f"removed {len(leftovers)} temporary file(s) of writes an earlier run did not finish: "
               + ", ".join(str(p.relative_to(rt.rd.root)) for p in leftovers[:5]))
    for warning in warnings:
        rt.log(f"warning: {warning}")
    rt.rd.manifest.cores = rt.cores.as_dict()  # what `auto` became on this machine (this start's)
    rt.rd.save()
    rt.log(rt.cores.line())
    for line in rt.rd.resume_notes():
        rt.log(line)
    rt.track()  # the trackers start (or reopen their runs) before any work, and catch up on a resume


def run_iteration(rt: Runtime, k: int) -> None:
    """One self-play iteration; stages already recorded in the manifest are skipped."""
    it = stages.iteration(rt, k)
    start = time.perf_counter()
    rt.log(f"iteration {k}")
    if rt.cfg.task.type != "pairs" and not rt.rd.stage_done(k, Stage.GENERATE):
        rt.start_learners(it.policy_in)  # sets up while the generators start and sample; `reference` waits
    for name, call in _offline_pairs(rt, it) if rt.cfg.task.type == "pairs" else _self_play(rt, it):
        _stage(rt, name, call, k)
    for name, call in _unchanged(rt, it) if stages.no_pairs(rt, k) else _learn(rt, it):
        _stage(rt, name, call, k)
    _stage(rt, Stage.EVALUATE, lambda: stages.evaluate(rt, it, rt.generators, lambda: rt.judge), k)
    rt.rd.mark_complete(k, policy_version=it.version, wall_seconds=time.perf_counter() - start)
    rt.track()  # the iteration's numbers, now that it is complete


Stages = list[tuple[Stage, Callable[[], Record | dict[str, Any] | None]]]


def _self_play(rt: Runtime, it: stages.Iteration) -> Stages:
    """Prompts -> samples of the current policy -> judged samples -> pairs. A `sessions` task (SDPO) plays
    its negative sessions on turn by turn instead (:mod:`selfplay.loop.session_play`)."""
    if rt.cfg.task.type == "sessions":
        from selfplay.loop.session_play import session_stages

        return session_stages(rt, it)
    return [(Stage.GENERATE, lambda: stages.generate(rt, it, stages.sample_prompts(rt, it.k),
                                                     rt.generators(it.policy_in, it.k), rt.ready_learners)),
            (Stage.JUDGE, lambda: stages.judge(rt, it, rt.judge)),
            (Stage.PAIRS, lambda: stages.build_pairs(rt, it))]


def _offline_pairs(rt: Runtime, it: stages.Iteration) -> Stages:
    """Pairs read from the task's dataset: nothing is generated or judged."""
    return [(Stage.GENERATE, lambda: {"skipped": "offline pairs: nothing to generate"}),
            (Stage.JUDGE, lambda: {"skipped": "offline pairs: already judged"}),
            (Stage.PAIRS, lambda: stages.dataset_pairs(rt, it))]


def _learn(rt: Runtime, it: stages.Iteration) -> Stages:
    """Pairs -> reference log-probs -> a training round -> the exported policy -> the generators."""
    return [(Stage.REFERENCE, lambda: stages.reference_logps(rt, it, rt.learners(it.policy_in))),
            (Stage.TRAIN, lambda: stages.train(rt, it, rt.learners(it.policy_in))),
            (Stage.EXPORT, lambda: stages.export(it, lambda: rt.learners(it.policy_in))),
            (Stage.SYNC, lambda: stages.sync(rt, it, rt.generator_pool, rt.learner_group, lambda: rt.weight_sync,
                                             rt.generators))]


def _unchanged(rt: Runtime, it: stages.Iteration) -> Stages:
    """No pairs: nothing to learn from, the policy is kept as it is under the next version."""
    return [(Stage.REFERENCE, lambda: stages.keep_reference(it)),
            (Stage.TRAIN, lambda: {"skipped": "no pairs", "steps": 0}),
            (Stage.EXPORT, lambda: stages.export_unchanged(it)),
            (Stage.SYNC, lambda: stages.sync_unchanged(it, rt.generator_pool, rt.generators))]


def prepare(rt: Runtime, iterations_follow: bool = True) -> dict[str, Any]:
    """The prepare stage, given the runtime's parts: each starts on first use, or in the background."""
    return stages.prepare(rt, generators=rt.generators, learners=rt.learners, start_generators=rt.start_generators,
                          start_learners=rt.start_learners, judge=lambda: rt.judge,
                          iterations_follow=iterations_follow)


def stop_if_solved(rt: Runtime, k: int) -> None:
    """Record an early stop when iteration ``k`` solved ``stop_when_solved`` of its training prompts."""
    threshold = rt.cfg.stop_when_solved
    solved = stages.solved_share(rt, k)
    if threshold is None or solved is None or solved < threshold:
        return
    rt.rd.manifest.stopped_early = StoppedEarly(after_iteration=k, solved_share=round(solved, 4),
                                                threshold=threshold)
    rt.rd.save()
    rt.log(f"stopping early: iteration {k} solved {solved:.1%} of its training prompts (>= {threshold:.0%})")


def _stage(rt: Runtime, name: Stage, fn: Callable[[], Record | dict[str, Any] | None], k: int | None = None) -> None:
    if k is not None and rt.rd.stage_done(k, name):
        rt.log(f"  {name}: done earlier, skipped")
        return
    start = time.perf_counter()
    with rt.stage_context(name, k):
        info = fn()
    seconds = time.perf_counter() - start
    if k is None:
        prepared = PrepareRecord.model_validate(info.as_dict() if isinstance(info, Record) else info or {})
        prepared.seconds = round(seconds, 3)
        rt.rd.manifest.prepared = True
        rt.rd.manifest.prepare = prepared
        rt.rd.save()
    else:
        rt.rd.mark_stage(k, name, seconds, info)
    rt.log(f"  {name}: {seconds:.1f}s {stages.brief(info.as_dict() if isinstance(info, Record) else info or {})}")
    rt.track()  # e.g. a round's steps once its train stage is recorded
