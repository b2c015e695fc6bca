"""Whether the learners may score shards beside generation: a question of this machine's cores."""

from __future__ import annotations

from selfplay.config.cores import machine_cores, resolve


def room_beside_generation(cfg) -> bool:
    """Whether the learners may score shards while the generators sample: with GPU learners, or when the
    threads of every learner and generator fit this machine's cores (with `auto` replicas and threads,
    generation alone takes every core, so it does not). Scoring beside vLLM on cores generation already
    uses slows generation down more than it saves (``python -m bench.iteration --threads 2`` shows it);
    grouping by shard, and so the numbers, do not depend on this."""
    if cfg.resources.learner_gpus:
        return True
    c = resolve(cfg, machine_cores(), cluster=False)  # a run's cfg is resolved already: read back as set
    return cfg.resources.learners * c.learner_threads + c.replicas * c.generator_threads <= c.cores
