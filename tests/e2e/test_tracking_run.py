"""One real run (a vLLM generator, a DeepSpeed learner as a Ray actor) with pass@k/maj@k evaluation and
wandb (offline) + mlflow (a local file store) tracking and no TensorBoard: the trackers get the learner's
steps and each iteration's numbers from the run directory, and the learner writes no TensorBoard events.

The run is the shrunk LoRA quick start (``lora_tracked_run`` in tests/e2e/conftest.py), which
tests/e2e/test_lora_quickstart.py reads for its LoRA checks: the trackers read the run directory, which a
LoRA round writes as any other round does, so one driver run serves both."""

from __future__ import annotations

import json
import os
import subprocess

import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import selfplay_cmd
from tests.loop.test_tracking import _wandb_history

pytestmark = pytest.mark.slow


def test_a_run_with_pass_at_k_and_wandb_and_mlflow(lora_tracked_run, monkeypatch):
    run = lora_tracked_run.run_dir
    assert lora_tracked_run.returncode == 0, lora_tracked_run.log[-4000:]
    assert "pass@4" in subprocess.run(selfplay_cmd("status", str(run)), capture_output=True, text=True,
                                      env={**os.environ, "COLUMNS": "80"}, check=True).stdout

    ev = json.loads((run / "iter_000" / "eval.json").read_text())
    assert ev["k"] == 4 and 0 <= ev["maj@k"] <= ev["pass@k"] <= 1 and 0 <= ev["pass@1"] <= ev["pass@k"]
    rows = pq.read_table(run / "iter_000" / "eval_generations.parquet").to_pylist()
    assert len(rows) == ev["num_prompts"] == 32
    assert all(len(r["samples"]) == 4 == len(r["sample_scores"]) for r in rows)
    assert not (run / "tensorboard").exists()  # not among the backends: the learner wrote none

    steps = [json.loads(line)["global_step"] for d in ("initial", "iter_000")
             for line in (run / d / "train_metrics.jsonl").read_text().splitlines()]
    state = json.loads((run / "tracking.json").read_text())
    ids, history = _wandb_history(run / "wandb")
    assert ids == {state["wandb"]["run_id"]}
    assert [r["train/global_step"] for r in history if "train/global_step" in r] == steps
    iters = {r["iteration"]: r for r in history if "iteration" in r}
    assert sorted(iters) == [0, 1] and iters[1]["eval/pass_at_4"] == pytest.approx(ev["pass@k"])

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=f"file:{lora_tracked_run.mlruns}")
    accuracy = client.get_metric_history(state["mlflow"]["run_id"], "eval/accuracy")
    assert sorted(m.step for m in accuracy) == [0, 1] and accuracy[-1].value == pytest.approx(ev["accuracy"])
    assert len(client.get_metric_history(state["mlflow"]["run_id"], "train/loss")) == len(steps)
