"""Experiment trackers: one small protocol, one class per backend, one plain factory.

A :class:`Tracker` takes named scalars on one of two x-axes: ``train/global_step`` (per optimizer step)
or ``iteration`` (per self-play iteration: the policy version, 0 for the starting policy). What is
logged, and when, is :mod:`selfplay.loop.tracking`'s business; a tracker only writes.

Choices:

* Each backend is imported when its tracker is built, never by ``import selfplay``: wandb and mlflow are
  the optional extra ``tracking`` (``pip install -e '.[tracking]'``), checked when a recipe is validated.
* A tracker resumes its run from ``state`` (a dict the caller persists in the run directory): wandb
  keeps its run id and reopens it with ``resume="allow"``, mlflow its run id; TensorBoard needs nothing
  (one log directory, ``RUN_DIR/tensorboard``).
* wandb gets both axes as its own step metrics (``define_metric``), not its internal ``_step``: that one
  must only grow within a run, and a per-iteration point follows many optimizer steps.
* mlflow logs each scalar with its step; the tracking URI is ``logging.mlflow_tracking_uri``, else
  MLflow's own default (``MLFLOW_TRACKING_URI``, ...).
* Non-finite values (a NaN loss) are skipped: not every backend stores them.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

AXES = ("train/global_step", "iteration")


class Tracker(Protocol):
    """Writes scalars to one experiment-tracking backend."""

    name: str

    def log(self, metrics: dict[str, float], *, axis: str, step: int) -> None:
        """Log ``metrics`` at ``step`` of ``axis`` (one of :data:`AXES`)."""
        ...

    def close(self) -> None: ...


def finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, float], *, axis: str, step: int) -> None:
        for key, value in finite(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    name = "wandb"

    def __init__(self, run_dir: Path, project: str, run_name: str, config: dict[str, Any],
                 state: dict[str, Any]) -> None:
        import wandb

        state.setdefault("run_id", uuid.uuid4().hex[:12])  # wandb's ids: lower-case letters and digits
        self.run = wandb.init(project=project, name=run_name, id=state["run_id"], resume="allow",
                              dir=str(run_dir), config=config, reinit="create_new")
        for axis in AXES:
            self.run.define_metric(axis)
        self.run.define_metric("train/*", step_metric="train/global_step")
        for prefix in ("eval", "pairs", "round", "seconds"):
            self.run.define_metric(f"{prefix}/*", step_metric="iteration")

    def log(self, metrics: dict[str, float], *, axis: str, step: int) -> None:
        self.run.log({**finite(metrics), axis: step})

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    name = "mlflow"

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str, state: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        if "run_id" not in state:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            state["run_id"] = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        else:
            self.client.update_run(state["run_id"], status="RUNNING")
        self.run_id = state["run_id"]

    def log(self, metrics: dict[str, float], *, axis: str, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in finite(metrics).items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def build_tracker(name: str, logging: Any, run_dir: Path, state: dict[str, Any],
                  config: dict[str, Any] | None = None) -> Tracker:
    """The tracker of backend ``name`` for the run in ``run_dir``; ``logging`` is the recipe's
    ``LoggingConfig``, ``state`` this backend's persisted state (a resumed run reopens its run)."""
    project = logging.project or "selfplay"
    run_name = logging.run_name or run_dir.name
    if name == "tensorboard":
        return TensorBoardTracker(run_dir / "tensorboard")
    if name == "wandb":
        return WandbTracker(run_dir, project, run_name, config or {}, state)
    if name == "mlflow":
        return MlflowTracker(logging.mlflow_tracking_uri, project, run_name, state)
    raise ValueError(f"logging.backends: unknown backend {name!r} (tensorboard, wandb, mlflow)")
