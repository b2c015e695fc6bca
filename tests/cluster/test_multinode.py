"""Scale-out on several Ray nodes: two generators and two learners on two different nodes, one whole
iteration through the driver, node affinity through custom resources, and a generator that survives the
loss of its node (runs last: it removes a node from the module's cluster).

The recipe is the e2e micro recipe with counts changed only (``generation.replicas: 2``,
``resources.learners: 2``, ``resources.placement: spread``): scaling out is a matter of counts.
"""

from __future__ import annotations

import copy
import threading
import time

import pytest

from selfplay.config.schema import ResourcesConfig
from tests.e2e.conftest import MICRO

ray = pytest.importorskip("ray", reason="needs Ray (absent on the GPU machines: docs/gpu.md)")

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_one_iteration_with_generators_and_learners_on_two_nodes(cluster, tmp_path):
    from selfplay.config import load_config
    from selfplay.loop import driver, stages
    from selfplay.loop.manifest import Stage
    from selfplay.loop.runtime import Runtime, open_run_dir

    recipe = copy.deepcopy(MICRO)
    recipe.update(iterations=1, evaluation={"num_prompts": 16})
    recipe["generation"]["replicas"] = 2
    recipe["resources"] = {"learners": 2, "placement": "spread"}
    cfg = load_config(recipe)
    rd = open_run_dir(cfg, tmp_path / "run")
    # driver.run, holding the runtime open at the end to ask the actors where they run
    with Runtime(cfg, rd) as rt:
        driver._stage(rt, Stage.PREPARE, lambda: driver.prepare(rt))
        driver.run_iteration(rt, 0)
        generators = rt.generators(stages.initial_policy(rt), 0).info()
        learners = rt.learners(stages.initial_policy(rt)).info()

    entry = rd.manifest.iterations["0"].model_dump(mode="json", exclude_unset=True)  # as stored
    assert entry["complete"] is True and entry["stages"]["sync"]["version"] == 1
    assert entry["stages"]["sync"]["max_diff"] <= 1e-3  # verified on both nodes' generators
    workers = {cluster.a, cluster.b}
    assert {g["node_id"] for g in generators} == workers, generators  # one generator on each worker
    assert {r["node_id"] for r in learners} == workers, learners  # one learner rank on each worker
    assert [g["version"] for g in generators] == [1, 1]


def test_custom_resources_pin_generators_and_learners_to_node_classes(cluster, tiny_model_dir):
    from actors.generator import GeneratorPool
    from actors.learner import LearnerGroup
    from selfplay.config.schema import GenerationConfig, TrainConfig

    resources = _resources(generator_resources={"zone_b": 1}, learner_resources={"zone_a": 1})
    pool = GeneratorPool(tiny_model_dir, GenerationConfig(backend="hf", replicas=2), resources, dtype="float32",
                         start_timeout_s=300)
    try:
        group = LearnerGroup(tiny_model_dir, TrainConfig(), num_learners=2, resources=resources,
                             setup_timeout_s=300)
        try:
            assert [r["node_id"] for r in group.info()] == [cluster.a] * 2
            assert [r["rank"] for r in group.info()] == [0, 1]
        finally:
            group.shutdown()
        # spread cannot split them: only worker b offers `zone_b`
        assert [g["node_id"] for g in pool.info()] == [cluster.b] * 2
    finally:
        pool.shutdown()


def test_generator_survives_the_loss_of_its_node(cluster, tiny_model_dir):
    from actors.generator import GeneratorPool
    from selfplay.config.schema import GenerationConfig
    from selfplay.generate import Sampling

    prompts = [f"{a}+{b}=" for a in range(4) for b in range(2)]
    sampling = Sampling(n=2, temperature=1.0, max_tokens=6, seed=3)
    pool = GeneratorPool(tiny_model_dir, GenerationConfig(backend="hf", replicas=2, shard_size=2),
                         _resources(max_restarts=2), dtype="float32", start_timeout_s=300)
    try:
        fault_free, _ = pool.generate(prompts, sampling)
        nodes = [g["node_id"] for g in pool.info()]
        assert sorted(nodes) == sorted([cluster.a, cluster.b])
        lost = nodes.index(cluster.b)
        ray.get(pool.actors[lost].inject_fault.remote("generate", "hang"), timeout=60)  # busy when b goes
        result = {}
        worker = threading.Thread(target=lambda: result.update(out=pool.generate(prompts, sampling)[0]))
        worker.start()
        time.sleep(3)
        cluster.cluster.remove_node(cluster.node_b, allow_graceful=False)  # the raylet and its workers die
        worker.join(timeout=600)
        assert result.get("out") is not None, "generate did not survive the node loss"
        assert [[c.token_ids for c in g] for g in result["out"]] == [[c.token_ids for c in g] for g in fault_free]
        # the placement group moved the lost bundle to the surviving node and Ray restarted the replica there
        # (another test of this module may have added a node with room: any live node other than B will do)
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        after = [g["node_id"] for g in pool.info()]
        assert cluster.b not in after and set(after) <= alive, (after, alive)
        assert after[1 - lost] == nodes[1 - lost]  # the surviving replica did not move
        assert pool.last_run["restored"] == [pool.names[lost]]
    finally:
        pool.shutdown()


def _resources(**custom):
    """The schema's own ResourcesConfig (validated, as a recipe would give it), with these tests' defaults."""
    base = dict(learners=2, learner_cpus=1.0, learner_gpus=0.0, generator_cpus=1.0, generator_gpus=0.0,
                placement="spread", threads_per_actor=1, max_restarts=1)
    return ResourcesConfig(**{**base, **custom})
