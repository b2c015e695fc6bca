"""Runs of ``bench.efficacy``: one ``selfplay`` process each, keyed by what they compute, reused when done.

Every run is the real pipeline as a user runs it: ``selfplay prepare`` for a seed's start policy, and
``selfplay run`` from that start (``policy.path``, no warm start) for an arm at some settings. Each is a
process with its own local Ray (``OMP_NUM_THREADS=1``; the bench runs ``--jobs`` of them at once), so
the arms stay independent.

Reuse: a run's directory is named by a hash of its *resolved* recipe (the recipe file with every
``--set`` applied and validated, ``run_key``). The same recipe, overrides and seed land in the same
directory and a finished run is read back instead of run again; any changed setting, in the recipe file
or on the command line, names a new directory, so a stale run is never reused. An arm's key includes
its start policy's path, which holds the start's own key, so a changed warm start invalidates the arms
too. An unfinished directory is resumed by ``selfplay run`` itself. Code changes are not in the key:
after changing the pipeline, use a new ``--out``. Next to each run directory ``NAME.run.json`` keeps the
process's wall time and ``NAME.result.json`` the measurements (``RESULT_VERSION`` says which).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT_VERSION = 2
_MEASURE = threading.Lock()


def run_key(recipe: Path, sets: list[str]) -> str:
    """12 hex digits of SHA-256 over the resolved, validated recipe: equal iff every setting is equal."""
    from selfplay.config import load_config

    cfg = load_config(recipe, sets)
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _selfplay(args: list[str], log: Path, threads: int = 1) -> tuple[int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "selfplay.cli", *args], cwd=ROOT, env=env, stdout=f,
                              stderr=subprocess.STDOUT, start_new_session=True)
    return proc.returncode, time.perf_counter() - start


def _sets_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def _sidecar(run_dir: Path, kind: str) -> Path:
    return run_dir.with_name(f"{run_dir.name}.{kind}.json")


def prepare_start(recipe: Path, out: Path, seed: int, sets: list[str]) -> dict[str, Any]:
    """``selfplay prepare`` for one seed (reused when its key's directory is prepared): the start
    policy's path, its validation/test accuracy and the seconds prepare took."""
    from bench.efficacy_split import run_split_scores
    from selfplay.loop.rundir import RunDir

    sets = [*sets, f"seed={seed}"]
    run_dir = out / "starts" / f"seed{seed}-{run_key(recipe, sets)}"
    done = _sidecar(run_dir, "run")
    if done.exists() and RunDir(run_dir).manifest.prepared:
        seconds = json.loads(done.read_text())["wall_s"]
    else:
        rc, seconds = _selfplay(["prepare", str(recipe), "--run-dir", str(run_dir), *_sets_args(sets)],
                                run_dir.with_suffix(".log"))
        if rc != 0 or not RunDir(run_dir).manifest.prepared:
            raise RuntimeError(f"seed {seed}: selfplay prepare failed (exit {rc}); see {run_dir.with_suffix('.log')}")
        done.write_text(json.dumps({"wall_s": seconds}))
    scores = run_split_scores(run_dir)
    return {"seed": seed, "policy": RunDir(run_dir).manifest.initial_policy, "run_dir": str(run_dir),
            "validation": scores["start_validation"], "test": scores["start_test"], "seconds": round(seconds, 1)}


def start_sets(seed: int, start: dict[str, Any]) -> list[str]:
    """Overrides that start a run from a prepared start policy (and no warm start of its own)."""
    return [f"seed={seed}", f"policy.path={start['policy']}", "policy.preset=null", "policy.warmstart=null"]


def run_arm(recipe: Path, out: Path, name: str, sets: list[str], start: dict[str, Any], *,
            full: bool, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """``selfplay run RECIPE --set sets`` in ``out/runs/NAME-KEY`` (reused when done), then its measurements.

    ``full``: also the KL to the start and the chosen log-prob change (two policy forwards; the table
    needs them, tuning does not). ``info`` (arm, seed, settings, ...) is copied into the result."""
    from bench.efficacy_report import measure

    run_dir = out / "runs" / f"{name}-{run_key(recipe, sets)}"
    cache, ran = _sidecar(run_dir, "result"), _sidecar(run_dir, "run")
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("version") == RESULT_VERSION and (cached.get("full") or not full):
            return {**cached, **(info or {}), "reused": True}
    if ran.exists():
        rc, seconds, reused = 0, json.loads(ran.read_text())["wall_s"], True
    else:
        rc, seconds = _selfplay(["run", str(recipe), "--run-dir", str(run_dir), *_sets_args(sets)],
                                run_dir.with_suffix(".log"))
        reused = False
        if rc == 0:
            ran.write_text(json.dumps({"wall_s": seconds}))
    result: dict[str, Any] = {**(info or {}), "version": RESULT_VERSION, "full": full, "run_dir": str(run_dir),
                              "returncode": rc, "wall_s": round(seconds, 1), "sets": sets}
    try:
        with _MEASURE:  # one at a time: HF loading is not thread-safe, and the runs need the cores more
            result.update(measure(run_dir, start["policy"], rc == 0, full=full))
    except Exception as exc:  # a measurement bug must not discard an hour of runs: report it per run
        result.update(returncode=rc or -1, error=f"measurement failed: {type(exc).__name__}: {exc}")
        return result
    if rc == 0:
        cache.write_text(json.dumps(result, indent=2))
    return {**result, "reused": reused}
