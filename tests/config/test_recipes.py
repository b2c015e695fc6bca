"""Recipes: every shipped file validates; broken ones fail with a message naming field, value and choices."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from selfplay.config import ConfigError, dump_config, load_config

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))

MINIMAL = {
    "policy": {"preset": "nano"},
    "task": {"type": "arithmetic", "level": 1},
    "judge": {"type": "verifier"},
}


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"quickstart.yaml", "spin_quickstart.yaml", "offline_dpo.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates(path):
    cfg = load_config(path)
    # A resolved recipe round-trips through YAML unchanged (it is stored in each run's manifest).
    again = load_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_gpu_recipes_carry_their_submit_command():
    for path in RECIPES:
        cfg = load_config(path)
        if cfg.resources.learner_gpus > 0:
            assert "ray job submit" in path.read_text(), path.name


def test_defaults_and_derived_values():
    cfg = load_config(MINIMAL)
    assert cfg.generation.backend == "vllm"
    assert cfg.pairing_strategy == "best_worst"
    assert cfg.train.loss.resolved_params() == {"label_smoothing": 0.0}
    spin = load_config({**MINIMAL, "judge": {"type": "sft"}})
    assert spin.pairing_strategy == "reference"


def test_overrides_set_nested_values_with_yaml_types():
    cfg = load_config(
        MINIMAL,
        [
            "train.loss.beta=0.2",
            "train.loss.type=ipo",
            'generation.stop=["\\n", "."]',  # YAML double quotes interpret the escape
            "train.zero_stage=3",
            "generation.backend=hf",
        ],
    )
    assert cfg.train.loss.beta == 0.2
    assert cfg.train.loss.type == "ipo"
    assert cfg.generation.stop == ["\n", "."]
    assert cfg.train.zero_stage == 3
    assert cfg.generation.backend == "hf"


def test_loss_params_are_validated_per_loss():
    cfg = load_config(MINIMAL, ["train.loss.type=dpop", "train.loss.params={lambda_: 5.0}"])
    assert cfg.train.loss.resolved_params()["lambda_"] == 5.0


def _apply(base: dict, path: str, value) -> dict:
    data = copy.deepcopy(base)
    node = data
    *head, last = path.split(".")
    for part in head:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(last)
    else:
        node[last] = value
    return data


_DELETE = object()

# (field path to break, bad value, substrings the message must contain)
BROKEN = [
    ("train.beta", 0.2, ["train.beta", "unknown field", "did you mean train.loss.beta"]),
    ("train.loss.beta", -1, ["train.loss.beta", "greater than 0", "-1"]),
    ("train.loss.type", "dpoo", ["train.loss.type", "'dpoo'", "sigmoid", "simpo"]),
    ("train.loss.params", {"gamma": 1.0}, ["train.loss.params", "gamma", "label_smoothing"]),
    ("train.loss", {"type": "robust", "params": {"label_smoothing": 0.6}}, ["train.loss.params", "label_smoothing"]),
    ("train.zero_stage", 4, ["train.zero_stage", "4", "0, 1, 2 or 3"]),
    ("train.precision", "fp16", ["train.precision", "fp16", "'fp32' or 'bf16'"]),
    ("generation.backend", "sglang", ["generation.backend", "sglang", "'vllm' or 'hf'"]),
    ("generation.n", 0, ["generation.n", "greater than or equal to 1", "0"]),
    ("generation.top_p", 1.5, ["generation.top_p", "1.5"]),
    ("generation.top_k", 0, ["generation.top_k", "-1 to disable"]),
    ("judge.type", "oracle", ["judge", "oracle", "verifier", "reward_model"]),
    ("judge", {"type": "reward_model"}, ["judge.path", "required"]),
    ("task.level", 9, ["task.level", "less than or equal to 6", "9"]),
    ("task", _DELETE, ["task", "required"]),
    ("policy", {"preset": "nano", "path": "/models/x"}, ["policy", "exactly one"]),
    ("policy.preset", "huge", ["policy.preset", "huge", "'nano'"]),
    ("pairing.strategy", "reference", ["pairing.strategy", "sft"]),
    ("sync.method", "nccl", ["sync.method", "GPUs"]),
    ("train.optimizer_offload", True, ["train.optimizer_offload", "zero_stage"]),
    ("resources.learners", 0, ["resources.learners", "0"]),
    ("iterations", "three", ["iterations", "'three'", "integer"]),
]


@pytest.mark.parametrize(("path", "value", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_recipe_messages(path, value, expected):
    with pytest.raises(ConfigError) as info:
        load_config(_apply(MINIMAL, path, value))
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"


def test_all_problems_are_reported_together():
    bad = _apply(_apply(MINIMAL, "generation.n", 0), "train.loss.beta", 0)
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert len(info.value.problems) == 2


def test_unknown_override_key_and_bad_syntax(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.betta: unknown field"):
        load_config(MINIMAL, ["train.betta=0.1"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(MINIMAL, ["train.beta"])


def test_file_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "bad.yaml"
    broken.write_text("policy: {preset: nano\ntask: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*\n.*not valid YAML at line"):
        load_config(broken)
