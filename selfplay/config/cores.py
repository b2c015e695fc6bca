"""How many generator replicas and torch/OpenMP threads a run uses: ``auto`` resolved once, before any actor.

The stages of an iteration run one after another (generate, judge, pairs, reference, train, export, sync,
evaluate), so on one machine the actor that works may have every core while the others wait: generation
on as many vLLM replicas (one thread each) as there are cores, training and the reference pass on as
many learner threads (divided among the learners), evaluation on the replicas again. That is what
``auto`` means for a run on one machine: an embedded local Ray (no ``RAY_ADDRESS``) and no GPUs asked.
Replicas rather than engine threads, because a small model's vLLM step on CPU is mostly the engine's
own Python work, which a second thread does not share (docs/benchmarks.md has the measurement).

On a cluster, or with GPUs, ``auto`` keeps the single-actor defaults (1 replica, 1 thread): there a
recipe sizes its own actors, and nothing about it changes. Explicit values are always used as written;
``auto`` only fills in what the recipe leaves open, around them (``generation.replicas: 1`` with
threads ``auto`` gives that one engine every core).

:func:`resolve` is a pure function of the recipe, the core count and whether Ray is a cluster, so the
same recipe on the same machine always resolves alike. A run records what it chose (``cores`` in the
manifest, one line in the log). The recipe on disk keeps ``auto``: the resolved values are not part of
a run's identity (they decide where work runs, not what it computes), so a resume on another machine
resolves afresh instead of redoing an iteration.

Below the driver (a ``GeneratorPool`` or ``LearnerGroup`` built directly, in tests or benchmarks) an
unresolved ``auto`` reads as 1: :func:`count`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

AUTO: Literal["auto"] = "auto"


def count(value: int | str) -> int:
    """A resolved count, or 1 for an ``auto`` nobody resolved (a part built below the driver)."""
    return 1 if value == AUTO else int(value)


def generator_threads(resources: Any) -> int:
    """Threads of each generator engine: ``generator_threads``, else ``threads_per_actor`` (1 if unset)."""
    own = getattr(resources, "generator_threads", AUTO)
    return count(own) if own != AUTO else count(getattr(resources, "threads_per_actor", 1))


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Cores:
    """What a run uses: generator replicas, threads per generator engine and per learner (also the model
    judge's), on how many cores, and why (``auto`` resolved, or every value set by the recipe)."""

    replicas: int
    generator_threads: int
    learner_threads: int
    cores: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (f"cores: {self.replicas} generator replica(s) x {self.generator_threads} thread(s), "
                f"learners {self.learner_threads} thread(s) each ({self.reason})")


def resolve(cfg: Any, cores: int, cluster: bool) -> Cores:
    """The replicas and threads ``cfg`` (a RunConfig) runs with on ``cores`` cores; ``cluster`` is True
    when Ray is a cluster the run joins (``RAY_ADDRESS``) rather than one it starts for itself."""
    gen, res = cfg.generation, cfg.resources
    asked = [name for name, v in (("generation.replicas", gen.replicas),
                                  ("resources.threads_per_actor", res.threads_per_actor),
                                  ("resources.generator_threads", res.generator_threads)) if v == AUTO]
    if not asked:
        return Cores(gen.replicas, res.generator_threads, res.threads_per_actor, cores, "set by the recipe")
    gpus = res.learner_gpus > 0 or res.generator_gpus > 0
    if cluster or gpus:  # the recipe sizes its actors: auto is what a single actor had before it existed
        learner = count(res.threads_per_actor)
        generator = count(res.generator_threads if res.generator_threads != AUTO else learner)
        why = "a Ray cluster" if cluster else "GPUs asked"
        return Cores(count(gen.replicas), generator, learner, cores, f"{why}: auto is 1")
    cores = max(1, cores)
    learner = res.threads_per_actor if res.threads_per_actor != AUTO else max(1, cores // res.learners)
    if res.generator_threads != AUTO:
        generator = res.generator_threads
    elif res.threads_per_actor != AUTO:  # one explicit thread count for every actor, as before
        generator = res.threads_per_actor
    elif gen.replicas != AUTO:  # the replicas asked for share the cores
        generator = max(1, cores // gen.replicas)
    else:
        generator = 1
    replicas = gen.replicas if gen.replicas != AUTO else max(1, cores // generator)
    return Cores(replicas, generator, learner, cores, f"auto on one machine of {cores} core(s): "
                 f"{', '.join(asked)}")


def apply(cfg: Any, chosen: Cores) -> Any:
    """``cfg`` with the resolved counts written in (no ``auto`` left), for the parts a run builds."""
    gen = cfg.generation.model_copy(update={"replicas": chosen.replicas})
    res = cfg.resources.model_copy(update={"threads_per_actor": chosen.learner_threads,
                                           "generator_threads": chosen.generator_threads})
    return cfg.model_copy(update={"generation": gen, "resources": res})


def resolve_for_this_process(cfg: Any) -> tuple[Any, Cores]:
    """Resolve ``cfg`` here: this process's cores, and a cluster exactly when ``RAY_ADDRESS`` is set
    (otherwise the run starts, or is handed, a Ray on this machine)."""
    chosen = resolve(cfg, machine_cores(), cluster=bool(os.environ.get("RAY_ADDRESS")))
    return apply(cfg, chosen), chosen
