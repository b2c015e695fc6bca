"""The placement plan as a pure function: which groups a recipe holds at once, and how they fit nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfplay.config import ConfigError, load_config
from selfplay.loop.placement import Group, check_cluster, fit, plan_groups

RECIPES = Path(__file__).parents[2] / "recipes"
TWO_BY_EIGHT = [{"CPU": 64.0, "GPU": 8.0}, {"CPU": 64.0, "GPU": 8.0}]
GPU = {"CPU": 1.0, "GPU": 1.0}


def test_the_model_judge_is_counted_with_its_own_resources():
    base = {"policy": {"path": "/m"}, "task": {"type": "dataset", "path": "/d"},
            "judge": {"type": "reward_model", "path": "/rm"}, "generation": {"replicas": 3},
            "resources": {"learners": 2, "learner_gpus": 1, "generator_gpus": 1}}
    groups = plan_groups(load_config(base))
    assert [g.name for g in groups] == ["generators", "judge (reward_model)", "learners"]
    assert groups[1].bundles == ({"CPU": 1.0, "GPU": 1.0},)  # default: a generator's resources
    own = plan_groups(load_config({**base, "resources": {**base["resources"], "judge_gpus": 0.5, "judge_cpus": 2}}))
    assert own[1].bundles == ({"CPU": 2.0, "GPU": 0.5},)
    warm = plan_groups(load_config({**base, "policy": {"preset": "nano", "warmstart": {}}}))
    assert warm[0].name == "learners"  # the warm start makes the learners first


def test_totals_short_are_named_per_resource():
    groups = [Group("generators", (GPU,) * 9), Group("learners", (GPU,) * 8)]
    result = fit(groups, TWO_BY_EIGHT)
    assert not result.ok
    assert result.problems[0].startswith("GPU: the run needs 17 at once, the cluster has 16 (missing 1)")


def test_strategies_place_like_ray_does():
    nodes = [{"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 4.0}]
    packed = fit([Group("a", (GPU,) * 3, "PACK")], nodes)
    assert packed.ok and len(set(packed.placed["a"])) == 1
    split = fit([Group("a", (GPU,) * 6, "PACK")], nodes)  # best effort: two nodes when one is too small
    assert split.ok and sorted(split.placed["a"]) == [0, 0, 0, 0, 1, 1]
    strict = fit([Group("a", (GPU,) * 6, "STRICT_PACK")], nodes)
    assert not strict.ok and "a: 6 x {CPU: 1, GPU: 1} (strict_pack) does not fit" in strict.problems[0]
    spread = fit([Group("a", (GPU,) * 4, "SPREAD")], nodes)
    assert sorted(spread.placed["a"]) == [0, 0, 1, 1]
    assert not fit([Group("a", (GPU,) * 3, "STRICT_SPREAD")], nodes).ok
    # fragmentation: 6 GPUs free in total, but no node has the 4 a strict group needs
    frag = fit([Group("x", (GPU,) * 3, "PACK"), Group("y", (GPU,) * 4, "STRICT_PACK")],
               [{"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 3.0}])
    assert frag.ok and frag.placed == {"x": [1, 1, 1], "y": [0] * 4}  # x took the fuller node


@pytest.mark.parametrize("name", ["spin_zephyr_7b.yaml", "iterative_dpo_llama3_8b.yaml", "sppo_pairwise.yaml"])
def test_gpu_recipes_fit_the_readme_cluster_and_not_one_gpu_less(name):
    cfg = load_config(RECIPES / name)
    result = check_cluster(cfg, TWO_BY_EIGHT)
    assert len(set(result.placed["learners"])) == 1  # learners packed on one node
    with pytest.raises(ConfigError, match="GPU: the run needs 16 at once, the cluster has 15"):
        check_cluster(cfg, [{"CPU": 64.0, "GPU": 8.0}, {"CPU": 64.0, "GPU": 7.0}])
    with pytest.raises(ConfigError, match="GPU: the run needs 16 at once, the cluster has 0"):
        check_cluster(cfg, [{"CPU": 2.0}])  # a CPU machine: refused at once instead of waiting
