"""One driver per run directory, through the real CLI: `selfplay run` processes on one directory.

A refused driver stops before Ray or vLLM start, so these runs are short: the one that proceeds is killed
once it has shown what the test needs (its ownership, or its take-over logged in the manifest). The
ownership mechanism itself (races, a lost owner stopping before its next write) is tested below the CLI
in tests/loop/test_ownership.py.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from selfplay.loop.ownership import OWNER, RECORD, read_owner
from tests.e2e.conftest import MICRO, ROOT, selfplay_cmd

RECIPE = copy.deepcopy(MICRO)
RECIPE.update(name="owned", iterations=1)


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "owned.yaml"
    path.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    return path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("SELFPLAY_KILL_AT", "RAY_ADDRESS")}


def _start(recipe: Path, run: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`selfplay run` in its own session (killed whole at the end), its output in ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(selfplay_cmd("run", str(recipe), "--run-dir", str(run), *extra), cwd=ROOT,
                                env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _run(recipe: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(selfplay_cmd("run", str(recipe), "--run-dir", str(run), *extra), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)


def _manifest(run: Path) -> dict:
    path = run / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _wait_for(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the driver exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _snapshot(run: Path) -> dict[str, tuple[int, int]]:
    """Every entry under the run directory with its size and mtime: what "written nothing" compares."""
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))}


def test_two_concurrent_runs_one_proceeds_status_only_reads_and_a_killed_owner_is_taken_over(recipe, tmp_path):
    run = tmp_path / "run"
    drivers = [_start(recipe, run, tmp_path / f"{name}.log") for name in "ab"]
    logs = dict(zip(drivers, [tmp_path / "a.log", tmp_path / "b.log"], strict=True))
    try:
        t0 = time.monotonic()
        while all(d.poll() is None for d in drivers):
            assert time.monotonic() < t0 + 180, "neither driver was refused"
            time.sleep(0.1)
        refused = time.monotonic() - t0
        loser = next(d for d in drivers if d.poll() is not None)
        winner = next(d for d in drivers if d is not loser)
        said = logs[loser].read_text()
        assert loser.returncode == 1, said
        assert f"error: run directory {run} is in use by another driver: pid {winner.pid} on host " in said, said
        assert "(live: this host, pid running). Wait for it to finish, or stop it" in said
        assert winner.poll() is None, logs[winner].read_text()[-3000:]  # exactly one proceeds

        # status during the run: answers at once, shows the owner, takes nothing
        _wait_for("a manifest", lambda: bool(_manifest(run)), winner, logs[winner])
        token = read_owner(run).record.token
        start = time.monotonic()
        status = subprocess.run(selfplay_cmd("status", str(run)), cwd=ROOT, env=_env(), capture_output=True,
                                text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        assert f"owner: pid {winner.pid} on host " in status.stdout, status.stdout
        assert "heartbeat " in status.stdout and "(live: this host, pid running)" in status.stdout
        assert read_owner(run).record.token == token and winner.poll() is None
        assert not list(run.glob(".owner.*")), "the refused driver or status left a claim behind"
        assert "takeovers" not in _manifest(run)
        print(f"refused after {refused:.1f}s; status during the run took {time.monotonic() - start:.1f}s")
        _kill(winner)  # SIGKILL: its record stays, naming a pid that is gone

        third = _start(recipe, run, tmp_path / "c.log")
        logs[third] = tmp_path / "c.log"
        drivers.append(third)
        _wait_for("the take-over logged", lambda: "took the run over" in logs[third].read_text(), third, logs[third])
        assert f"took the run over from pid {winner.pid} on host " in logs[third].read_text()
        takeover = _manifest(run)["takeovers"]
        assert len(takeover) == 1 and takeover[0]["previous"]["pid"] == winner.pid
        assert takeover[0]["reason"] == f"pid {winner.pid} is not running on this host"
        assert takeover[0]["take_over_flag"] is False and takeover[0]["by"]["pid"] == third.pid
        assert read_owner(run).record.pid == third.pid
    finally:
        for d in drivers:
            _kill(d)


def test_an_owner_on_another_host_is_refused_while_fresh_and_taken_with_take_over_when_stale(recipe, tmp_path):
    run = tmp_path / "run"
    (run / OWNER).mkdir(parents=True)
    record = run / OWNER / RECORD
    record.write_text(json.dumps({"token": "node-b-token", "host": "node-b", "pid": 4242, "job": "raysubmit_7f3a",
                                  "started": "2026-12-07T09:14:02+0000"}))
    before = _snapshot(run)

    fresh = _run(recipe, run)
    assert fresh.returncode == 1, fresh.stderr[-3000:]
    assert (f"error: run directory {run} is in use by another driver: pid 4242 on host node-b (ray job "
            "raysubmit_7f3a), started 2026-12-07T09:14:02+0000, heartbeat ") in fresh.stderr, fresh.stderr
    assert "(live: heartbeat within 120s). Wait for it to finish, or stop it (`ray job stop raysubmit_7f3a`)" \
        in fresh.stderr
    assert _snapshot(run) == before  # refused: nothing written

    os.utime(record, (time.time() - 600, time.time() - 600))  # its node went silent ten minutes ago
    before = _snapshot(run)
    stale = _run(recipe, run)
    assert stale.returncode == 1, stale.stderr[-3000:]
    assert re.search(r"heartbeat 10m\d\ds ago \(stale: no heartbeat for more than 120s\)\. If that driver is dead",
                     stale.stderr), stale.stderr
    assert "rerun with --take-over to take the run over" in stale.stderr, stale.stderr
    assert _snapshot(run) == before

    taker = _start(recipe, run, tmp_path / "taker.log", "--take-over")
    try:
        _wait_for("the take-over logged", lambda: "took the run over" in (tmp_path / "taker.log").read_text(), taker,
                  tmp_path / "taker.log")
        (takeover,) = _manifest(run)["takeovers"]
        assert takeover["previous"]["host"] == "node-b" and takeover["previous"]["job"] == "raysubmit_7f3a"
        assert takeover["take_over_flag"] is True and takeover["previous"]["heartbeat_age_s"] >= 600
        assert read_owner(run).record.pid == taker.pid
    finally:
        _kill(taker)
