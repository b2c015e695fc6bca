"""What a run reports to its experiment trackers (``logging.backends``), read from the run directory.

:meth:`RunTracker.sync` is called by the driver after every stage. It reads what the run has written
(the manifest, each ``eval.json``, each ``train_metrics.jsonl``) and logs to every backend what that
backend has not had yet. The run directory is the only source, so a learner running as a Ray actor needs
no tracker of its own, a resumed run (or a backend added on resume) catches up from the artifacts, and
``RUN_DIR/tracking.json`` records per backend its run id and the last step it logged: nothing is logged
twice (a driver killed between a log call and that record can repeat the steps of one sync).

Two axes (:mod:`selfplay.loop.trackers`):

* ``train/global_step``: every optimizer step of the warm start and of each round, ``train/<key>`` for
  the numbers of its ``train_metrics.jsonl`` line, forwarded once the train stage is recorded (its lines
  are final then). TensorBoard is left out: the learner's rank 0 writes these to ``RUN_DIR/tensorboard``
  itself, as they happen.
* ``iteration``: the policy version (0: the starting policy, k + 1: after iteration k), once the
  iteration is complete: ``eval/<key>`` from ``eval.json`` (``accuracy``, ``win_rate``, ``mean_reward``,
  and with ``evaluation.k`` ``pass_at_8``, ``maj_at_8``, ``pass_at_1``: MLflow allows no ``@`` in a
  name), ``pairs/<key>`` from the pairs stage (``pairs``, ``prompts_without_pair``, ``no_pair_<reason>``,
  ...), ``round/<key>`` from the train stage's summary (``loss_mean``, ``reward_margin``,
  ``rejected_drift``, ...), ``seconds/<stage>`` and ``seconds/iteration`` (``seconds/prepare`` at 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfplay.loop.manifest import STAGES, Stage
from selfplay.loop.rundir import RunDir, RunDirError, read_json, read_jsonl, write_json
from selfplay.loop.trackers import Tracker, build_tracker, finite

STATE_FILE = "tracking.json"
_NOT_SCALARS = {"kind", "step", "global_step", "round", "epoch"}  # in a step line: the axis and its labels
_EVAL_LABELS = {"version", "num_prompts", "k", "rejected_drift"}  # rejected_drift: logged from the round
_ROUND_KEYS = ("loss", "loss_mean", "reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps", "kl",
               "rejected_drift", "steps", "kept", "dropped", "truncated")


def train_steps(rd: RunDir) -> list[dict[str, Any]]:
    """Every final step line of the run, in order: the warm start's, then each trained round's."""
    dirs = [rd.initial_dir] if rd.manifest.prepared else []
    dirs += [rd.iter_dir(int(k)) for k in sorted(rd.manifest.iterations, key=int)
             if rd.stage_done(int(k), Stage.TRAIN)]
    steps: dict[int, dict[str, Any]] = {}
    for d in dirs:
        path = d / "train_metrics.jsonl"
        for rec in read_jsonl(path) if path.exists() else []:
            if isinstance(rec.get("global_step"), int):
                steps[rec["global_step"]] = rec  # a step written twice (a resumed round): the last one
    return [steps[s] for s in sorted(steps)]


def _eval(path: Path) -> dict[str, float]:
    ev = read_json(path) if path.exists() else {}
    k = ev.get("k")
    # `pass@k` -> `pass_at_8`: MLflow refuses `@` in a name, and one name in every backend is easier to find
    return {f"eval/{key.replace('@k', f'_at_{k}').replace('@', '_at_')}": v for key, v in finite(ev).items()
            if key not in _EVAL_LABELS}


def iteration_points(rd: RunDir) -> list[tuple[int, dict[str, float]]]:
    """``(policy version, metrics)`` of the starting policy (once prepared) and of each complete iteration."""
    points = []
    if rd.manifest.prepared:
        prepare = rd.manifest.prepare.as_dict() if rd.manifest.prepare is not None else {}
        points.append((0, {**_eval(rd.initial_dir / "eval.json"), "seconds/prepare": prepare.get("seconds")}))
    for k in rd.completed_iterations():
        stages = {s: rd.stage_info(k, s) for s in STAGES}
        pairs = {f"pairs/{key}": v for key, v in stages["pairs"].items() if key != "seconds"}
        train = {f"round/{key}": stages["train"][key] for key in _ROUND_KEYS if key in stages["train"]}
        seconds = {f"seconds/{s}": info.get("seconds") for s, info in stages.items() if info}
        seconds["seconds/iteration"] = sum(v for v in seconds.values() if isinstance(v, int | float))
        points.append((k + 1, finite({**_eval(rd.iter_dir(k) / "eval.json"), **pairs, **train, **seconds})))
    return points


class TrackerStartError(RunDirError):
    """A backend of ``logging.backends`` could not start (``selfplay run`` reports it before any work)."""


class RunTracker:
    """The run's trackers, one per ``logging.backends`` entry, kept in step with the run directory."""

    def __init__(self, cfg: Any, rd: RunDir) -> None:
        self.rd = rd
        self.path = rd.root / STATE_FILE
        self.state: dict[str, dict[str, Any]] = read_json(self.path) if self.path.exists() else {}
        config = json.loads(json.dumps(rd.manifest.recipe, default=str))
        self.trackers: list[Tracker] = []
        for name in cfg.logging.backends:
            try:
                self.trackers.append(build_tracker(name, cfg.logging, rd.root, self.state.setdefault(name, {}),
                                                   config))
            except Exception as exc:  # e.g. wandb online without a login: before any work, naming the backend
                self.close()
                raise TrackerStartError(f"logging.backends: {name} could not start ({type(exc).__name__}: {exc})"
                                        ) from exc
            self._save()  # a new run id is kept before anything is logged to it

    def sync(self) -> list[str]:
        """Log what each backend has not had yet. A backend that fails (a network error) is reported in the
        returned lines and tried again at the next sync; it never stops the run or the other backends."""
        wants_steps = any(t.name != "tensorboard" for t in self.trackers)
        steps, points = train_steps(self.rd) if wants_steps else [], iteration_points(self.rd)
        problems = []
        for tracker in self.trackers:
            try:
                self._catch_up(tracker, steps, points)
            except Exception as exc:  # noqa: BLE001 - a tracker's failure is reported, the run goes on
                problems.append(f"logging.backends: {tracker.name} failed ({type(exc).__name__}: {exc}); "
                                "it is tried again after the next stage")
            finally:
                self._save()
        return problems

    def _catch_up(self, tracker: Tracker, steps: list[dict[str, Any]], points: list[tuple[int, dict]]) -> None:
        st = self.state[tracker.name]
        if tracker.name != "tensorboard":  # the learner writes its steps to TensorBoard itself
            for rec in (r for r in steps if r["global_step"] > st.get("last_step", 0)):
                metrics = {f"train/{key}": v for key, v in rec.items() if key not in _NOT_SCALARS}
                tracker.log(metrics, axis="train/global_step", step=rec["global_step"])
                st["last_step"] = rec["global_step"]
        for version, metrics in points:
            if version > st.get("last_iteration", -1):
                tracker.log(metrics, axis="iteration", step=version)
                st["last_iteration"] = version

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def _save(self) -> None:
        write_json(self.path, self.state)
