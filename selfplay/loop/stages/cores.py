"""Whether the learners may score shards beside generation: a question of this machine's cores."""

from __future__ import annotations

from selfplay.config.cores import machine_cores, resolve


def room_beside_generation(cfg) -> bool:
    """Whether the learners may score shards while the generators sample: with GPU learners, or when the
    threads of every learner and generator fit this machine's cores (with `auto` replicas and threads,
    generation alone takes every core, so it does not). On a 2-core machine with 2 threads per actor,
    scoring beside vLLM made generation 5.7x slower (bench.iteration --threads 2: 11.3 s against 2.0 s);
    grouping by shard, and so the numbers, do not depend on this."""
    if cfg.resources.learner_gpus:
        return True
    c = resolve(cfg, machine_cores(), cluster=False)  # a run's cfg is resolved already: read back as set
    return cfg.resources.learners * c.learner_threads + c.replicas * c.generator_threads <= c.cores
