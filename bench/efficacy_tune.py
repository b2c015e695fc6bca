"""``python -m bench.efficacy --tune``: each arm's settings chosen on the validation half, and the file
that keeps them (``bench/efficacy_tuned.yaml``).

The search is what a practitioner with a small budget does, in three stages per arm (seed 0, the
reduced ``TUNE_BUDGET``, every run scored by its last iteration's validation accuracy):

1. ``coarse``: the arm's learning-rate grid (``ArmSpace.lr``: 4-5 values over 30-100x) at the default
   epochs and beta.
2. ``edge``: only when the coarse stage's best learning rate is the grid's smallest or largest (and beats
   the grid point beside it), the grid
   goes one decade further that way (a third and a tenth of the smallest, or 3x and 10x the largest): an
   optimum on the edge of a grid says the grid was wrong, not that the edge is best.
3. ``axes``: at the best point so far, every other value of epochs and of beta, one axis at a time.
4. ``fine``: the best epochs and the best beta together (each read where only it varied), at that
   learning rate and at half and twice it.

That is 8-9 runs for an arm without beta and 11-12 for one with it, two more when the edge stage runs
(a point already run is not rerun). The chosen
settings are the best validation accuracy over every run of the arm; ties go to the earlier run, so a
setting that needs a later stage to win must beat what came before it. A failed run is never chosen.
Test accuracy is never read here: the tuned file holds validation numbers only.

The file is keyed by task (``TaskRow.name``) and records, per arm, the chosen settings, their validation
accuracy and every trial, so a reader sees what was tried. ``--tune`` rewrites only the arms it ran.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from bench.efficacy_arms import ArmSpace

TUNE_BUDGET = ("iterations=2", "generation.prompts_per_iteration=2048")
"""The tuning runs' budget: the table's rounds (same prompts per iteration, so the same optimizer steps
per round), two of them instead of three."""
TUNED_FILE = Path(__file__).resolve().parent / "efficacy_tuned.yaml"
STAGES = ("coarse", "edge", "axes", "fine")
EDGE_STEPS = (3.0, 10.0)
"""How far past the grid's edge the ``edge`` stage goes: the edge learning rate over (or times) these."""
LR_STAGES = ("coarse", "edge")


def _key(settings: dict[str, Any]) -> tuple:
    return tuple(sorted((k, float(v)) for k, v in settings.items()))


def _score(trial: dict[str, Any]) -> float | None:
    return trial.get("validation") if trial.get("returncode", 0) == 0 else None


def best_trial(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the highest validation accuracy (the earliest among equals); None if none scored."""
    best = None
    for t in trials:
        s = _score(t)
        if s is not None and (best is None or s > _score(best)):
            best = t
    return best


def stage_settings(space: ArmSpace, stage: str, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The settings ``stage`` runs, given the arm's ``trials`` so far (each a dict with ``settings`` and
    ``validation``), without the points already tried. Empty when nothing scored before it."""
    if stage == "coarse":
        out = [{**space.default(), "lr": lr} for lr in space.lr]
    elif stage == "edge":
        best = best_trial([t for t in trials if t.get("stage") == "coarse"])
        if best is None:
            return []
        lr, grid = best["settings"]["lr"], sorted(space.lr)
        inner = {grid[0]: grid[1], grid[-1]: grid[-2]}.get(lr) if len(grid) > 1 else None
        beside = [t for t in trials if t.get("stage") == "coarse" and t["settings"]["lr"] == inner]
        if inner is None or any(_score(t) is not None and _score(t) >= _score(best) for t in beside):
            return []  # inside the grid, or tied with its neighbour: the grid brackets the optimum
        out = [{**best["settings"], "lr": lr / f if lr == grid[0] else lr * f} for f in EDGE_STEPS]
    elif stage in ("axes", "fine"):
        anchor = best_trial([t for t in trials if t.get("stage") in LR_STAGES])
        if anchor is None:
            return []
        at = dict(anchor["settings"])
        if stage == "axes":
            out = [{**at, "epochs": e} for e in space.epochs if e != at["epochs"]]
            if space.beta is not None:
                out += [{**at, "beta": b} for b in space.beta if b != at["beta"]]
        else:
            pick = dict(at)
            for axis in ("epochs", "beta"):  # each axis's best value, read where only it varied around the anchor
                same = [t for t in trials if _others(t["settings"], at, axis)]
                best = best_trial(same)
                if best is not None:
                    pick[axis] = best["settings"][axis]
            out = [{**pick, "lr": at["lr"] * f} for f in (1.0, 0.5, 2.0)]
    else:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    seen = {_key(t["settings"]) for t in trials}
    fresh, keys = [], set()
    for s in out:
        k = _key(s)
        if k not in seen and k not in keys:
            keys.add(k)
            fresh.append(s)
    return fresh


def _others(settings: dict[str, Any], at: dict[str, Any], axis: str) -> bool:
    """True when ``settings`` equals ``at`` on every setting but ``axis`` (which must exist)."""
    return axis in settings and all(settings.get(k) == v for k, v in at.items() if k != axis)


def max_trials(space: ArmSpace) -> int:
    """Most runs the search makes for an arm (when no point repeats and the edge stage runs)."""
    axes = len(space.epochs) - 1 + (len(space.beta) - 1 if space.beta is not None else 0)
    return len(space.lr) + len(EDGE_STEPS) + axes + 3


# ------------------------------------------------------------------------------------------ the file
HEADER = """\
# Settings of each bench.efficacy arm, chosen by `python -m bench.efficacy --tune` on the validation half of
# the held-out prompts (seed 0, the tuning budget below); `python -m bench.efficacy` runs the table with
# them on seeds 0, 1 and 2 and reports the test half only. Written by bench/efficacy_tune.py: rerun
# --tune instead of editing. lr = train.learning_rate, epochs = train.epochs, beta = train.loss.beta,
# nll_weight = train.loss.nll_weight. `validation` is accuracy on the validation half after the budget.
"""


def load_tuned(path: Path = TUNED_FILE) -> dict[str, Any]:
    """The tuned file as ``{"tasks": {task: {..., "arms": {arm: {"settings", ...}}}}}`` (empty if absent)."""
    if not path.exists():
        return {"tasks": {}}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("tasks", {}), dict):
        raise ValueError(f"{path}: expected a mapping with a `tasks` mapping")
    data.setdefault("tasks", {})
    for task, entry in data["tasks"].items():
        for arm, rec in (entry or {}).get("arms", {}).items():
            if not isinstance(rec, dict) or not isinstance(rec.get("settings"), dict):
                raise ValueError(f"{path}: tasks.{task}.arms.{arm}: needs a `settings` mapping")
    return data


def tuned_settings(data: dict[str, Any], task: str, arm: str) -> dict[str, Any] | None:
    """The chosen settings of ``arm`` on ``task``, or None when it was not tuned."""
    rec = data.get("tasks", {}).get(task, {}).get("arms", {}).get(arm)
    return dict(rec["settings"]) if rec else None


def record_arm(data: dict[str, Any], task: str, info: dict[str, Any], arm: str,
               trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Put ``arm``'s search into ``data`` (under ``task``, with the task's ``info``: recipe, overrides,
    budget, seed); returns the chosen trial, or None (and records nothing) when no trial scored."""
    best = best_trial(trials)
    if best is None:
        return None
    entry = data.setdefault("tasks", {}).setdefault(task, {})
    entry.update(info)
    entry.setdefault("arms", {})[arm] = {
        "settings": dict(best["settings"]),
        "validation": _round(best["validation"]),
        "trials": [{**t["settings"], "stage": t.get("stage"),
                    "validation": _round(_score(t)) if _score(t) is not None else "failed"} for t in trials],
    }
    return best


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def write_tuned(data: dict[str, Any], path: Path = TUNED_FILE) -> Path:
    """Write ``data`` (as ``load_tuned`` returns it) atomically, with the explaining header."""
    text = HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def best_preference_arm(data: dict[str, Any], task: str, arms: tuple[str, ...]) -> str | None:
    """Of ``arms``, the one whose tuned settings scored highest on ``task``'s validation half."""
    recs = data.get("tasks", {}).get(task, {}).get("arms", {})
    scored = [(recs[a]["validation"], -i, a) for i, a in enumerate(arms)
              if a in recs and isinstance(recs[a].get("validation"), int | float)]
    return max(scored)[2] if scored else None

