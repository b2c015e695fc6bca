"""``selfplay status`` as a terminal shows it: 80 columns hold every number, and a reader that stops
reading (``| head``) ends the command quietly. A run directory written by hand (no Ray, no model)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from selfplay.loop.rundir import STAGES, RunDir, write_json
from selfplay.loop.status import status_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    rd = RunDir(tmp_path / "a-run-directory-with-a-long-name")
    rd.create({}, "", {})
    rd.manifest.prepared = True
    rd.manifest.prepare = {"seconds": 45.2}
    rd.initial_dir.mkdir()
    write_json(rd.initial_dir / "eval.json", {"version": 0, "accuracy": 0.0213, "mean_reward": 0.0213})
    for k in range(12):
        for stage in STAGES:
            info = {"pairs": 1234 + k} if stage == "pairs" else {}
            if stage == "train":
                info = {"loss": 0.68412, "reward_accuracy": 0.63641, "rejected_drift": -1.4321}
            rd.mark_stage(k, stage, 1000.0, info)
        rd.iter_dir(k).mkdir(parents=True, exist_ok=True)
        write_json(rd.iter_dir(k) / "eval.json", {"version": k + 1, "accuracy": 0.0263 + k / 1000,
                                                  "win_rate": 0.50312, "mean_reward": -0.02561})
        rd.mark_complete(k, k + 1)
    rd.save()
    return rd.root


def test_status_fits_80_columns_with_every_number_readable(run_dir):
    out = io.StringIO()
    status_table(run_dir, console=Console(file=out, width=80))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in out.getvalue()  # nothing cut short
    row = next(line for line in lines if line.split()[:1] == ["11"])
    assert row.split() == ["11", "done", "1245", "0.684", "0.636", "0.0373", "0.503", "-0.0256", "-1.4", "8000"]


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    return subprocess.Popen([sys.executable, "-m", "selfplay.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_status_cli_at_80_columns(run_dir):
    proc = _cli("status", str(run_dir))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80 and "0.0373" in out and "…" not in out


@pytest.mark.parametrize("form", [[], ["--json"]], ids=["table", "json"])
def test_status_into_a_closed_pipe_exits_quietly(run_dir, form):
    """What ``selfplay status RUN | head -1`` does once head has gone: the reader is closed before the
    command writes anything. Exit status 1 (as rich's own broken-pipe handling), no traceback."""
    proc = _cli("status", *form, str(run_dir))
    proc.stdout.close()  # the reader stops reading before the command writes its output
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and err == "", err
