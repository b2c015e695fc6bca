"""End to end with every real part: local Ray, vLLM (CPU) generators, DeepSpeed learner, verifier judge.

One uninterrupted micro run is the reference. A second run is SIGKILLed during generation and again
during training (real process kills at exact points, see selfplay/loop/faults.py), rerun each time, and
must end with exactly the records of the uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from tests.e2e.conftest import MICRO, ROOT, run_driver, selfplay_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    recipe = d / "micro.yaml"
    recipe.write_text(yaml.safe_dump(MICRO, sort_keys=False))
    result = run_driver(recipe, d / "run")
    assert result.returncode == 0, result.stdout[-4000:]
    return recipe, d / "run", result.stdout


def _pairs(run_dir, k):
    return pq.read_table(run_dir / f"iter_{k:03d}" / "pairs.parquet")


def test_run_directory_contract(reference_run):
    _, run, log = reference_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["prepared"] is True
    for k in (0, 1):
        entry = manifest["iterations"][str(k)]
        assert entry["complete"] is True
        assert list(entry["stages"]) == ["generate", "judge", "pairs", "reference", "train", "export", "sync",
                                         "evaluate"]
        it = run / f"iter_{k:03d}"
        for name in ("generations.parquet", "judgments.parquet", "pairs.parquet", "train_metrics.jsonl",
                     "eval.json", "policy/config.json", "policy/model.safetensors"):
            assert (it / name).exists(), name
        gens = pq.read_table(it / "generations.parquet")
        assert gens.num_rows == 48 * 4
        assert set(gens.column("policy_version").to_pylist()) == {k}
        pairs = _pairs(run, k)
        assert pairs.num_rows > 0
        ids = pairs.column("pair_id").to_pylist()
        assert len(ids) == len(set(ids))
        steps = [json.loads(line) for line in (it / "train_metrics.jsonl").read_text().splitlines()]
        assert steps and all("loss" in s and "reward_accuracy" in s for s in steps)
        ev = json.loads((it / "eval.json").read_text())
        assert ev["version"] == k + 1 and ev["num_prompts"] == 48 and 0.0 <= ev["accuracy"] <= 1.0
        # The sync after training was verified against the learner on a probe batch.
        sync = entry["stages"]["sync"]
        assert sync["version"] == k + 1 and sync["max_diff"] <= 1e-3
    assert json.loads((run / "initial" / "eval.json").read_text())["version"] == 0


def test_status_and_report(reference_run):
    _, run, _ = reference_run
    out = subprocess.run(selfplay_cmd("status", str(run), "--json"), cwd=ROOT, capture_output=True, text=True,
                         check=True)
    rows = json.loads(out.stdout)
    assert [r["iteration"] for r in rows] == ["initial", 0, 1]
    assert all(r["state"] == "done" for r in rows)
    out = subprocess.run(selfplay_cmd("report", str(run)), cwd=ROOT, capture_output=True, text=True, check=True)
    pngs = out.stdout.split()
    assert {p.rsplit("/", 1)[-1] for p in pngs} >= {"eval.png", "margins.png", "logps.png", "stage_times.png"}
    for p in pngs:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", p


def test_killed_driver_resumes_to_the_same_records(reference_run, tmp_path):
    recipe, ref_run, _ = reference_run
    run = tmp_path / "run"
    first = run_driver(recipe, run, kill_at="generate@1:1")
    assert first.returncode == -signal.SIGKILL, first.stdout[-3000:]
    shards = sorted((run / "iter_001" / "generations").glob("shard_*.parquet"))
    assert len(shards) == 1 and not (run / "iter_001" / "generations.parquet").exists()

    second = run_driver(recipe, run, kill_at="train@1:1")
    assert second.returncode == -signal.SIGKILL, second.stdout[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert "train" not in manifest["iterations"]["1"]["stages"]

    third = run_driver(recipe, run)
    assert third.returncode == 0, third.stdout[-4000:]
    for k in (0, 1):
        a = pq.read_table(ref_run / f"iter_{k:03d}" / "generations.parquet")
        b = pq.read_table(run / f"iter_{k:03d}" / "generations.parquet")
        assert a.num_rows == b.num_rows
        assert a.column("response").to_pylist() == b.column("response").to_pylist()
        pa_ids, pb_ids = (_pairs(r, k).column("pair_id").to_pylist() for r in (ref_run, run))
        assert len(pb_ids) == len(set(pb_ids))
        assert sorted(pa_ids) == sorted(pb_ids)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["iterations"]["1"]["complete"] is True


def test_bad_recipe_and_missing_model_fail_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: {preset: nano}\ntask: {type: arithmetic}\njudge: {type: verifier}\ntrain: {betta: 1}\n")
    out = subprocess.run(selfplay_cmd("run", str(bad), "--run-dir", str(tmp_path / "r")), cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "train.betta: unknown field" in out.stderr
    assert not (tmp_path / "r").exists()
    missing = tmp_path / "missing.yaml"
    missing.write_text("policy: {path: /nonexistent/model}\ntask: {type: arithmetic}\njudge: {type: verifier}\n")
    out = subprocess.run(selfplay_cmd("run", str(missing), "--run-dir", str(tmp_path / "m")), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "policy.path: /nonexistent/model does not exist" in out.stderr
    assert not (tmp_path / "m").exists()  # nothing started, nothing written


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
