"""An iteration without preference pairs is not an error: it is recorded with the counts of why, the policy
stays as it is, the run goes on (or stops early when the recipe asks), and ``status`` shows it."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess

import pytest
import yaml

from tests.e2e.conftest import MICRO, ROOT, run_driver, selfplay_cmd

pytestmark = pytest.mark.slow

SOLVED = {**copy.deepcopy(MICRO), "name": "solved",
          "task": {"type": "python", "target": "tests.e2e.solved_task:SolvedTask", "kwargs": {"level": 1}},
          "policy": {"preset": "nano", "tokenizer": "char"},  # no warm start: nothing here needs a learner
          "pairing": {"strategy": "best_worst"},
          "evaluation": {"num_prompts": 16}}


def _digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _write(tmp_path, recipe) -> object:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_an_all_solved_run_finishes_and_keeps_its_policy(tmp_path):
    run = tmp_path / "run"
    result = run_driver(_write(tmp_path, SOLVED), run)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "has no preference pairs" in result.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    initial = _digest(run / "initial" / "base")
    for k in (0, 1):
        entry = manifest["iterations"][str(k)]
        assert entry["complete"] is True
        pairs = entry["stages"]["pairs"]
        assert pairs["no_pairs"] is True and pairs["pairs"] == 0 and pairs["no_pair_all_correct"] == 48
        assert entry["stages"]["train"]["skipped"] == "no pairs"
        assert _digest(run / f"iter_{k:03d}" / "policy") == initial  # the policy stayed as it was
        ev = json.loads((run / f"iter_{k:03d}" / "eval.json").read_text())
        assert ev["version"] == k + 1 and ev["accuracy"] == 1.0
    assert "stopped_early" not in manifest
    out = subprocess.run(selfplay_cmd("status", str(run), "--json"), cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert [r["state"] for r in json.loads(out.stdout)] == ["done", "no pairs", "no pairs"]


def test_a_recipe_can_stop_once_the_training_prompts_are_solved(tmp_path):
    """Also the e2e check of `auto` replicas and threads (MICRO pins them): on at most two of this machine's
    cores, the run starts the replicas it resolved, each engine with the threads it resolved."""
    from selfplay.config import load_config
    from selfplay.config.cores import resolve

    cores = sorted(os.sched_getaffinity(0))[:2]
    recipe = {**SOLVED, "iterations": 3, "stop_when_solved": 0.9, "generation": {**SOLVED["generation"],
              "replicas": "auto"}, "resources": {"threads_per_actor": "auto"}}
    run = tmp_path / "run"
    result = run_driver(_write(tmp_path, recipe), run, cpus=set(cores), env={"RAY_ADDRESS": None})
    assert result.returncode == 0, result.stdout[-4000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stopped_early"] == {"after_iteration": 0, "solved_share": 1.0, "threshold": 0.9}
    assert list(manifest["iterations"]) == ["0"]
    assert "stopping early" in result.stdout
    want = resolve(load_config(recipe), len(cores), cluster=False)
    assert manifest["cores"] == want.as_dict() and "cores:" in result.stdout  # and the log's line
    assert manifest["recipe"]["generation"]["replicas"] == "auto"  # the recipe as written; `cores` says what ran
    started = manifest["iterations"]["0"]["stages"]["generate"]["generator_threads"]  # reported by each engine
    assert started == [want.generator_threads] * want.replicas
