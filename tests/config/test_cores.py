"""``auto`` replicas and threads (selfplay/config/cores.py): hand-worked cases of the pure resolution, and
what it means where it is read (the placement plan, the learners' scoring beside generation)."""

from __future__ import annotations

import os

import pytest

from selfplay.config import load_config
from selfplay.config.cores import AUTO, apply, count, generator_threads, resolve
from selfplay.config.schema import ResourcesConfig

BASE = {"policy": {"preset": "nano"}, "task": {"type": "arithmetic"}, "judge": {"type": "verifier"}}


def _cfg(generation=None, resources=None):
    return load_config({**BASE, "generation": generation or {}, "resources": resources or {}})


def _shape(c) -> tuple[int, int, int]:
    return c.replicas, c.generator_threads, c.learner_threads


def test_the_defaults_are_auto():
    cfg = _cfg()
    assert (cfg.generation.replicas, cfg.resources.threads_per_actor, cfg.resources.generator_threads) == (AUTO,) * 3


@pytest.mark.parametrize(("cores", "learners", "want"), [
    (2, 1, (2, 1, 2)),  # this machine: two one-thread engines, then one two-thread learner
    (16, 1, (16, 1, 16)),
    (16, 2, (16, 1, 8)),  # the cores divided among the learners
    (16, 3, (16, 1, 5)),  # rounded down: never more threads than cores
    (1, 1, (1, 1, 1)),
    (2, 4, (2, 1, 1)),  # more learners than cores: still one thread each
])
def test_auto_on_one_machine_gives_every_stage_every_core(cores, learners, want):
    c = resolve(_cfg(resources={"learners": learners}), cores, cluster=False)
    assert _shape(c) == want and c.cores == cores and "auto on one machine" in c.reason


@pytest.mark.parametrize("resources", [{}, {"learners": 2}])
def test_auto_on_a_cluster_keeps_one_replica_and_one_thread(resources):
    c = resolve(_cfg(resources=resources), 16, cluster=True)
    assert _shape(c) == (1, 1, 1) and c.reason.startswith("a Ray cluster")


@pytest.mark.parametrize("resources", [{"learner_gpus": 1}, {"generator_gpus": 0.5}])
def test_auto_with_gpus_keeps_one_replica_and_one_thread(resources):
    c = resolve(_cfg(resources=resources), 16, cluster=False)
    assert _shape(c) == (1, 1, 1) and c.reason.startswith("GPUs asked")


def test_explicit_values_are_always_honoured():
    every = _cfg({"replicas": 3}, {"threads_per_actor": 4, "generator_threads": 2})
    for cores, cluster in ((2, False), (16, False), (16, True)):
        assert _shape(resolve(every, cores, cluster)) == (3, 2, 4)
        assert resolve(every, cores, cluster).reason == "set by the recipe"
    # today's explicit quick-start pin: one thread everywhere, the replicas fill the cores
    assert _shape(resolve(_cfg(resources={"threads_per_actor": 1}), 2, False)) == (2, 1, 1)
    assert _shape(resolve(_cfg(resources={"threads_per_actor": 2}), 4, False)) == (2, 2, 2)
    # one replica asked for: it gets every core, as the learner does
    assert _shape(resolve(_cfg({"replicas": 1}), 2, False)) == (1, 2, 2)
    assert _shape(resolve(_cfg({"replicas": 3}), 16, False)) == (3, 5, 16)
    # explicit counts on a cluster, the rest auto: the explicit ones kept, threads of generators follow
    assert _shape(resolve(_cfg({"replicas": 4}, {"threads_per_actor": 8}), 2, True)) == (4, 8, 8)


def test_a_resolved_recipe_resolves_to_itself_and_keeps_everything_else():
    cfg = _cfg({"replicas": AUTO, "n": 3}, {"learners": 2, "learner_cpus": 2})
    chosen = resolve(cfg, 16, cluster=False)
    fixed = apply(cfg, chosen)
    assert (fixed.generation.replicas, fixed.resources.generator_threads, fixed.resources.threads_per_actor) == \
        (16, 1, 8)
    assert fixed.generation.n == 3 and fixed.resources.learner_cpus == 2 and cfg.generation.replicas == AUTO
    again = resolve(fixed, 16, cluster=False)
    assert _shape(again) == _shape(chosen) and again.reason == "set by the recipe"
    assert chosen.as_dict()["replicas"] == 16 and "16 generator replica(s) x 1 thread(s)" in chosen.line()


def test_an_unresolved_auto_below_the_driver_reads_as_one():
    assert count(AUTO) == 1 and count(3) == 3
    assert generator_threads(ResourcesConfig()) == 1  # a pool built directly (tests, benchmarks)
    assert generator_threads(ResourcesConfig(threads_per_actor=2)) == 2
    assert generator_threads(ResourcesConfig(threads_per_actor=2, generator_threads=1)) == 1
    from selfplay.loop.placement import plan_groups

    groups = {g.name: g for g in plan_groups(_cfg())}  # `selfplay validate --cluster`: a cluster's 1
    assert len(groups["generators"].bundles) == 1


def test_scoring_beside_generation_only_where_the_resolved_threads_fit(monkeypatch):
    import selfplay.config.cores as cores
    from selfplay.loop.stages import room_beside_generation

    monkeypatch.setattr(cores, "machine_cores", lambda: 2)
    spin = {**BASE, "judge": {"type": "sft"}, "pairing": {"strategy": "reference"}}
    # auto on 2 cores: generation takes both, so the learner waits for its turn
    assert not room_beside_generation(load_config(spin))
    assert room_beside_generation(load_config({**spin, "generation": {"replicas": 1},
                                               "resources": {"threads_per_actor": 1}}))
    resolved = apply(load_config(spin), resolve(load_config(spin), 2, cluster=False))
    assert not room_beside_generation(resolved)


@pytest.mark.parametrize(("given", "want"), [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
                                             ({"GOMP_SPINCOUNT": "10000"}, None)])
def test_openmp_threads_sleep_at_barriers_unless_the_user_chose(monkeypatch, given, want):
    """Actors inherit the driver's environment (Ray starts them after ``setup_env``), so this reaches them."""
    from selfplay.env import setup_env

    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    setup_env()
    assert os.environ.get("OMP_WAIT_POLICY") == want
