"""End to end with every real part: local Ray, vLLM (CPU) generators, DeepSpeed learner, verifier judge.

One uninterrupted micro run (``micro_run``, shared with other modules) is the reference. A second run
is SIGKILLed during generation and again during training (real process kills at exact points, see
selfplay/loop/faults.py), rerun each time, and must end with exactly the records of the uninterrupted
run: the same generations and pairs, the same policy weights bit for bit, the same training metrics
(timings aside) and evaluation.

Evaluation figures are recomputed here from the answers the run kept (``eval_generations.parquet``), with
the arithmetic verifier's rule written out independently (the reference is the prompt's sum; the answer's
leading integer must equal it), so a figure that does not follow from the answers fails.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import ROOT, run_driver, selfplay_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference_run(micro_run):
    """The shared uninterrupted micro run (tests/e2e/micro_run.py)."""
    return micro_run.recipe, micro_run.run_dir, micro_run.log


def _pairs(run_dir, k):
    return pq.read_table(run_dir / f"iter_{k:03d}" / "pairs.parquet")


def _correct(eval_dir) -> dict[str, float]:
    """Per held-out prompt, 1.0 when the kept answer's leading integer is the prompt's sum, else 0.0."""
    rows = pq.read_table(eval_dir / "eval_generations.parquet").to_pylist()
    out = {}
    for r in rows:
        a, b = (int(x) for x in re.search(r"(\d+)\+(\d+)=", r["prompt"]).groups())
        assert r["reference"] == str(a + b), r
        text = r["response"].strip()
        m = re.match(r"[+-]?\d+", text.splitlines()[0] if text else "")
        out[r["prompt_id"]] = float(m is not None and int(m.group()) == a + b)
    assert len(out) == len(rows) == 48  # one answer per held-out prompt, no duplicates
    return out


def _check_eval(eval_dir, initial_dir=None) -> None:
    ev = json.loads((eval_dir / "eval.json").read_text())
    mine = _correct(eval_dir)
    assert ev["num_prompts"] == len(mine)
    assert ev["accuracy"] == pytest.approx(sum(mine.values()) / len(mine), abs=1e-12)
    if initial_dir is not None:  # win rate against the initial policy's answers: win 1, tie 0.5
        base = _correct(initial_dir)
        assert set(base) == set(mine)
        wins = [1.0 if mine[p] > base[p] else 0.5 if mine[p] == base[p] else 0.0 for p in mine]
        assert ev["win_rate"] == pytest.approx(sum(wins) / len(wins), abs=1e-12)


# Not compared after a resume: timings, and the learner's process-lifetime counters. A resumed driver's
# learner starts counting rounds and global steps at 0 again (seen here: iteration 1 logged round 2, global
# steps 12.. uninterrupted, round 0, global steps 1.. resumed), so they do not follow from the run
# directory; each file's steps are still checked to run 1, 2, ... once each.
NOT_COMPARED = ("seconds", "tokens_per_s", "examples_per_s", "round", "global_step")


def _train_metrics(it) -> list[dict]:
    records = [json.loads(line) for line in (it / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    return [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in records]


def _weights(policy_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(policy_dir / "model.safetensors")


def test_run_directory_contract(reference_run):
    _, run, log = reference_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["prepared"] is True
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for k in (0, 1):
        entry = manifest["iterations"][str(k)]
        assert entry["complete"] is True
        assert list(entry["stages"]) == ["generate", "judge", "pairs", "reference", "train", "export", "sync",
                                         "evaluate"]
        it = run / f"iter_{k:03d}"
        for name in ("generations.parquet", "judgments.parquet", "pairs.parquet", "train_metrics.jsonl",
                     "eval.json", "policy/config.json", "policy/model.safetensors"):
            assert (it / name).exists(), name
        assert not (it / "checkpoint").exists()  # a finished round keeps its policy, not its optimizer state
        assert not (it / "tensorboard").exists()  # the curves of every round are one run in RUN_DIR/tensorboard
        assert entry["stages"]["train"]["policy"] == str(it / "policy")  # written by the train stage itself
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
        assert ev["version"] == k + 1 and ev["num_prompts"] == 48
        _check_eval(it, run / "initial")
        assert [s["global_step"] for s in steps] == list(range(steps[0]["global_step"], steps[-1]["global_step"] + 1))
        # best_worst pairs hold 2 of the 4 samples: not worth scoring all of them ahead (the fault
        # harness runs SPIN pairs, which are)
        assert "prescored_shards" not in entry["stages"]["reference"]
        # The sync after training was verified against the learner on a probe batch.
        sync = entry["stages"]["sync"]
        assert sync["version"] == k + 1 and sync["max_diff"] <= 1e-3
    assert json.loads((run / "initial" / "eval.json").read_text())["version"] == 0
    _check_eval(run / "initial")


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


@pytest.mark.soak  # make test-soak / test-all: the fault harness (make test) draws these kills at random
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
        it_a, it_b = ref_run / f"iter_{k:03d}", run / f"iter_{k:03d}"
        wa, wb = _weights(it_a / "policy"), _weights(it_b / "policy")
        assert wa.keys() == wb.keys() and all(wa[n].dtype == wb[n].dtype and wa[n].equal(wb[n]) for n in wa)
        assert _train_metrics(it_b) == _train_metrics(it_a)  # one line per step: none lost, none doubled
        assert json.loads((it_b / "eval.json").read_text()) == json.loads((it_a / "eval.json").read_text())
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
