"""The GPU recipes' placement plans on the cluster the README describes: two workers with 8 GPUs each
(logical GPUs: ``num_gpus=8`` schedules on CPU-only nodes), a head with nothing, all on this machine.

For each GPU recipe the plan check says it fits, and the same reservations made for real (generator
placement group, judge actor, learner placement group, in the order a run makes them) are all granted.
A recipe that needs one GPU more than the cluster has is refused at once with the missing resource
named, and for real its learner group indeed never places.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from selfplay.config import ConfigError, load_config

pytestmark = pytest.mark.cluster

RECIPES = Path(__file__).parents[2] / "recipes"
GPU_RECIPES = ["spin_zephyr_7b.yaml", "iterative_dpo_llama3_8b.yaml", "sppo_pairwise.yaml"]
NODE = {"num_cpus": 64, "num_gpus": 8}


@pytest.fixture(scope="module")
def gpu_cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="sp-gpus-")  # Ray's address file, not the shared /tmp/ray
    os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"))
    common = {"object_store_memory": 128 * 1024 * 1024, "temp_dir": os.environ["RAY_TMPDIR"]}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False,
                                                      **common})
    for _ in range(2):
        c.add_node(**NODE, **common)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved


def reserve(groups, timeout_s: float):
    """Make the plan's reservations in order; returns (granted group names, handles to release)."""
    import ray
    from ray.util.placement_group import placement_group

    @ray.remote
    class Holder:
        def ready(self) -> bool:
            return True

    granted, handles = [], []
    for g in groups:
        if g.name.startswith("judge ("):  # a plain actor, as actors/judge.py starts it
            b = g.bundles[0]
            actor = Holder.options(num_cpus=b["CPU"], num_gpus=b.get("GPU", 0)).remote()
            handles.append(("actor", actor))
            ready = actor.ready.remote()
        else:
            pg = placement_group([dict(b) for b in g.bundles], strategy=g.strategy)
            handles.append(("pg", pg))
            ready = pg.ready()
        done, _ = ray.wait([ready], timeout=timeout_s)
        if not done:
            break
        granted.append(g.name)
    return granted, handles


def release(handles) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    for kind, h in handles:
        if kind == "pg":
            remove_placement_group(h)
        else:
            ray.kill(h)
    time.sleep(0.5)


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_each_gpu_recipe_fits_two_8_gpu_workers_for_real(gpu_cluster, name):
    from selfplay.loop.placement import check_cluster, cluster_nodes, plan_groups

    cfg = load_config(RECIPES / name)
    nodes = cluster_nodes()
    assert sorted(n.get("GPU", 0.0) for n in nodes) == [0.0, 8.0, 8.0]
    result = check_cluster(cfg, nodes)
    groups = plan_groups(cfg)
    assert sum(len(g.bundles) * g.bundles[0].get("GPU", 0) for g in groups) == 16
    learners = result.placed["learners"]
    assert len(set(learners)) == 1  # ZeRO-3/2 ranks packed on one node
    granted, handles = reserve(groups, timeout_s=60)
    try:
        assert granted == [g.name for g in groups]
    finally:
        release(handles)


def test_a_plan_one_gpu_over_is_refused_at_once_and_really_would_not_place(gpu_cluster):
    from selfplay.loop.placement import check_cluster, plan_groups

    cfg = load_config(RECIPES / "iterative_dpo_llama3_8b.yaml", ["generation.replicas=8"])
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"GPU: the run needs 17 at once, the cluster has 16 \(missing 1\)") as err:
        check_cluster(cfg)
    assert time.perf_counter() - start < 5.0
    assert "judge (reward_model): 1 x {CPU: 4, GPU: 1}" in str(err.value)
    granted, handles = reserve(plan_groups(cfg), timeout_s=5)
    try:
        assert granted == ["generators", "judge (reward_model)"]  # the learner group would wait forever
    finally:
        release(handles)


def test_validate_cluster_cli_prints_the_plan_or_refuses(gpu_cluster, capsys):
    from selfplay.cli import main

    assert main(["validate", str(RECIPES / "sppo_pairwise.yaml"), "--cluster"]) == 0
    err = capsys.readouterr().err
    assert "fits" in err and "learners: 8 x {CPU: 8, GPU: 1} -> node" in err
    code = main(["validate", str(RECIPES / "spin_zephyr_7b.yaml"), "--cluster", "--set", "resources.learners=9"])
    err = capsys.readouterr().err
    assert code == 2 and "GPU: the run needs 17 at once, the cluster has 16" in err


def test_runtime_preflight_refuses_before_any_actor(gpu_cluster, tmp_path, monkeypatch):
    """A driver under `ray job submit` joins the cluster in ensure_ray; the plan is checked right there."""
    import ray

    from selfplay.loop.runtime import Runtime, open_run_dir

    cfg = load_config(RECIPES / "sppo_pairwise.yaml", ["generation.replicas=9"])
    rd = open_run_dir(cfg, tmp_path / "run")
    ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", gpu_cluster.address)
    try:
        with Runtime(cfg, rd) as rt:
            with pytest.raises(ConfigError, match=r"GPU: the run needs 18 at once, the cluster has 16"):
                rt.generators(rd.root / "policy", version=0)  # the first actor a run would start
            assert ray.is_initialized() and rt.generator_pool is None and rt.learner_group is None
            pending = [p for p in ray.util.placement_group_table().values() if p["state"] != "REMOVED"]
            assert pending == []  # nothing was reserved
    finally:
        if not ray.is_initialized():
            ray.init(address=gpu_cluster.address, log_to_driver=False)
