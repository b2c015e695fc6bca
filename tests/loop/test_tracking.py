"""Experiment tracking (``logging.backends``) driven from a run directory written as the driver writes it
(no Ray, no model): every backend gets the per-step and per-iteration numbers, read back from its own
store (wandb offline: the run's ``.wandb`` files; mlflow: a local file store; TensorBoard: its event
files), and a "resumed" run continues the same tracked run without a repeated step."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path

import pytest

from selfplay.config import ConfigError, load_config
from selfplay.loop.rundir import STAGES, RunDir, write_json
from selfplay.loop.tracking import STATE_FILE, RunTracker

RECIPE = {"policy": {"preset": "nano"}, "task": {"type": "arithmetic"}, "judge": {"type": "verifier"},
          "evaluation": {"k": 4, "temperature": 1.0}}


def _steps(first: int, count: int, kind: str = "dpo") -> list[dict]:
    return [{"kind": kind, "round": 0, "step": i + 1, "global_step": first + i, "epoch": 0,
             "loss": 0.69 - 0.01 * (first + i), "grad_norm": float("nan") if first + i == 4 else 1.5, "lr": 1e-3}
            for i in range(count)]


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _iteration(rd: RunDir, k: int, first_step: int, steps: int) -> None:
    """Iteration k, complete: its stage records, step log and eval.json (with pass@k and maj@k)."""
    for stage in STAGES:
        info = {"pairs": {"prompts": 64, "pairs": 40 + k, "prompts_without_pair": 24 - k, "no_pair_all_correct": 20,
                          "no_pair_all_wrong": 4 - k},
                "train": {"steps": steps, "loss": 0.5, "reward_margin": 0.3 + k, "rejected_drift": 0.12 * (k + 1)},
                }.get(stage, {})
        rd.mark_stage(k, stage, 2.0 + k, info)
    _jsonl(rd.iter_dir(k) / "train_metrics.jsonl", _steps(first_step, steps))
    write_json(rd.iter_dir(k) / "eval.json", {"version": k + 1, "num_prompts": 16, "accuracy": 0.25 + 0.25 * k,
                                              "win_rate": 0.5 + 0.1 * k, "k": 4, "pass@k": 0.5 + 0.1 * k,
                                              "pass@1": 0.3, "maj@k": 0.375, "rejected_drift": 0.12 * (k + 1)})
    rd.mark_complete(k, k + 1)


def _prepared_run(root: Path) -> RunDir:
    """The starting policy, warm-started (global steps 1-2) and evaluated, then iteration 0 (steps 3-5)."""
    rd = RunDir(root)
    rd.create(load_config(RECIPE).model_dump(mode="json"), "", {})
    _jsonl(rd.initial_dir / "train_metrics.jsonl", _steps(1, 2, kind="sft"))
    write_json(rd.initial_dir / "eval.json", {"version": 0, "num_prompts": 16, "accuracy": 0.125, "k": 4,
                                              "pass@k": 0.25, "pass@1": 0.1, "maj@k": 0.125})
    rd.manifest.prepared, rd.manifest.prepare = True, {"warmstart": {"steps": 2}, "seconds": 7.5}
    rd.save()
    _iteration(rd, 0, first_step=3, steps=3)
    return rd


def _wandb_history(wandb_dir: Path) -> tuple[set[str], list[dict]]:
    """Run ids and history rows of every offline run file under ``wandb_dir``, read with wandb's own
    protobuf ``Record`` from the LevelDB-style log the SDK writes (a 7-byte ``:W&B`` header, then 32 KiB
    blocks of records, each with a 7-byte header: CRC, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    ids, rows = set(), []
    for path in sorted(wandb_dir.glob("offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, buf = 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if left < 7 or (length == 0 and kind == 0):  # block padding
                pos += left
                continue
            buf += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):
                record = pb.Record()
                record.ParseFromString(buf)
                buf = b""
                if record.WhichOneof("record_type") == "run":
                    ids.add(record.run.run_id)
                elif record.WhichOneof("record_type") == "history":
                    rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                 for i in record.history.item})
    return ids, rows


@pytest.fixture()
def tracked_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file: store otherwise
    return tmp_path


def test_every_backend_reads_back_and_a_resume_repeats_no_step(tracked_env):
    tmp = tracked_env
    uri = f"file:{tmp / 'mlruns'}"
    cfg = load_config({**RECIPE, "logging": {"backends": ["tensorboard", "wandb", "mlflow"], "project": "t",
                                             "mlflow_tracking_uri": uri}})
    rd = _prepared_run(tmp / "run")
    first = RunTracker(cfg, rd)
    assert first.sync() == []
    first.sync()  # nothing new: nothing logged
    first.close()

    # "resume": a new driver process, iteration 1 (steps 6-7) done since
    rd = RunDir(tmp / "run")
    _iteration(rd, 1, first_step=6, steps=2)
    second = RunTracker(cfg, rd)
    assert second.sync() == []
    second.close()
    state = json.loads((rd.root / STATE_FILE).read_text())
    assert state["wandb"]["last_step"] == 7 and state["mlflow"]["last_iteration"] == 2

    losses = {s: 0.69 - 0.01 * s for s in range(1, 8)}
    ids, rows = _wandb_history(rd.root / "wandb")
    assert ids == {state["wandb"]["run_id"]}  # one run, reopened
    train = [(r["train/global_step"], r) for r in rows if "train/global_step" in r]
    iters = [(r["iteration"], r) for r in rows if "iteration" in r]
    assert [s for s, _ in train] == list(range(1, 8)) and [v for v, _ in iters] == [0, 1, 2]  # none twice
    assert all(r["train/loss"] == pytest.approx(losses[s]) for s, r in train)
    assert "train/grad_norm" not in dict(train)[4]  # a NaN is not logged
    assert dict(iters)[2]["eval/pass_at_4"] == pytest.approx(0.6) and dict(iters)[2]["eval/maj_at_4"] == 0.375
    assert dict(iters)[1]["pairs/no_pair_all_correct"] == 20 and dict(iters)[2]["round/rejected_drift"] == 0.24
    assert dict(iters)[2]["seconds/train"] == 3.0 and dict(iters)[2]["seconds/iteration"] == 3.0 * len(STAGES)
    assert dict(iters)[0]["eval/accuracy"] == 0.125 and dict(iters)[0]["seconds/prepare"] == 7.5

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert [r.info.run_id for r in runs] == [state["mlflow"]["run_id"]]
    run_id = runs[0].info.run_id
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(s, round(v, 6)) for s, v in losses.items()]
    accuracy = client.get_metric_history(run_id, "eval/accuracy")
    assert sorted((m.step, m.value) for m in accuracy) == [(0, 0.125), (1, 0.25), (2, 0.5)]
    assert [m.value for m in client.get_metric_history(run_id, "pairs/pairs")] == [40, 41]
    assert client.get_metric_history(run_id, "eval/win_rate")[-1].value == pytest.approx(0.6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(rd.root / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(0, 0.125), (1, 0.25), (2, 0.5)]
    assert [e.step for e in events.Scalars("eval/pass_at_4")] == [0, 1, 2]
    assert not [t for t in events.Tags()["scalars"] if t.startswith("train/")]  # the learner writes those


def test_a_backend_that_is_not_installed_fails_validation_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logging.backends: wandb is not installed.*pip install -e '\.\[tracking\]'"):
        load_config({**RECIPE, "logging": {"backends": ["tensorboard", "wandb"]}})
    assert load_config({**RECIPE, "logging": {"backends": ["mlflow"]}}).logging.backends == ["mlflow"]
    assert load_config(RECIPE).logging.backends == ["tensorboard"]  # today's default
    with pytest.raises(ConfigError, match="twice"):
        load_config({**RECIPE, "logging": {"backends": ["mlflow", "mlflow"]}})


def test_a_failing_backend_is_reported_and_retried_without_stopping_the_others(tracked_env):
    cfg = load_config({**RECIPE, "logging": {"backends": ["tensorboard", "mlflow"],
                                             "mlflow_tracking_uri": f"file:{tracked_env / 'mlruns'}"}})
    rd = _prepared_run(tracked_env / "run")
    tracker = RunTracker(cfg, rd)
    mlflow = tracker.trackers[1]
    log = mlflow.log
    mlflow.log = lambda *a, **kw: (_ for _ in ()).throw(ConnectionError("tracking server unreachable"))
    problems = tracker.sync()
    assert len(problems) == 1 and "mlflow failed (ConnectionError" in problems[0]
    assert tracker.state["tensorboard"]["last_iteration"] == 1 and "last_step" not in tracker.state["mlflow"]
    mlflow.log = log
    assert tracker.sync() == [] and tracker.state["mlflow"]["last_step"] == 5
    tracker.close()
    assert not math.isnan(tracker.state["mlflow"]["last_iteration"])


def test_a_backend_may_be_added_on_resume_and_catches_up(tracked_env):
    """``logging`` is a change a resumed run takes: nothing already produced depends on it, and the added
    backend gets the run's history from the run directory."""
    from selfplay.loop.runtime import open_run_dir

    cfg = load_config(RECIPE)
    rd = open_run_dir(cfg, tracked_env / "run")
    rd.manifest.prepared, rd.manifest.prepare = True, {"seconds": 1.0}
    rd.save()
    write_json(rd.initial_dir / "eval.json", {"version": 0, "num_prompts": 16, "accuracy": 0.125})
    _iteration(rd, 0, first_step=1, steps=2)
    uri = f"file:{tracked_env / 'mlruns'}"
    more = load_config({**RECIPE, "logging": {"backends": ["tensorboard", "mlflow"], "mlflow_tracking_uri": uri}})
    rd = open_run_dir(more, tracked_env / "run")  # no RunDirError: the recipe change is taken
    assert rd.manifest.recipe["logging"]["backends"] == ["tensorboard", "mlflow"]
    tracker = RunTracker(more, rd)
    assert tracker.sync() == []
    tracker.close()
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(tracker.state["mlflow"]["run_id"], "eval/accuracy")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.125), (1, 0.25)]


def test_a_backend_that_cannot_start_fails_before_any_work_naming_it(tmp_path, monkeypatch):
    """MLflow 3 refuses a ``file:`` store unless told otherwise: the run stops at once, saying which backend."""
    from selfplay.loop.tracking import TrackerStartError

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = load_config({**RECIPE, "logging": {"backends": ["tensorboard", "mlflow"],
                                             "mlflow_tracking_uri": f"file:{tmp_path / 'mlruns'}"}})
    rd = RunDir(tmp_path / "run")
    rd.create({}, "", {})
    with pytest.raises(TrackerStartError, match="logging.backends: mlflow could not start.*MLFLOW_ALLOW_FILE_STORE"):
        RunTracker(cfg, rd)
