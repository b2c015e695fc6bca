"""One owner per run directory, with real processes (no Ray): refusal, release, a killed owner taken over at
once, drivers racing for a free or a stale run (one wins), and a driver that lost the run to a take-over
stopping before its next write. The `selfplay run` side is in tests/e2e/test_one_driver.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfplay.atomic import write_text
from selfplay.loop.ownership import OWNER, RECORD, OwnerRecord, OwnershipError, acquire, hold, read_owner

ROOT = Path(__file__).resolve().parents[2]
HOLDER = Path(__file__).with_name("owner_holder.py")


def _holder(run_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HOLDER), str(run_dir), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def _first_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline().strip()
    assert line, f"the holder said nothing (exit {proc.poll()}): {proc.stdout.read()[-3000:]}"
    return line


def _fake_owner(run_dir: Path, age: float, host: str = "node-b") -> OwnerRecord:
    """The record a driver on another host would have written, with a heartbeat ``age`` seconds old."""
    record = OwnerRecord(token=f"fake{time.time_ns()}", host=host, pid=4242, started="2026-12-01T10:00:00+0000")
    (run_dir / OWNER).mkdir(parents=True)
    path = run_dir / OWNER / RECORD
    path.write_text(json.dumps(dataclasses.asdict(record)))
    os.utime(path, (time.time() - age, time.time() - age))
    return record


def test_a_second_driver_is_refused_until_the_first_releases(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        assert _first_line(holder).startswith("owned ")
        with pytest.raises(OwnershipError) as refused:
            acquire(run, interrupt=False)
        message = str(refused.value)
        assert f"is in use by another driver: pid {holder.pid} on host " in message
        assert re.search(r"heartbeat \d+s ago \(live: this host, pid running\)", message), message
        assert f"`kill {holder.pid}`" in message
        with pytest.raises(OwnershipError, match="--take-over refuses a live owner"):
            acquire(run, take_over=True, interrupt=False)
        assert sorted(p.name for p in run.iterdir()) == [OWNER]  # the refused tries left nothing
    finally:
        holder.terminate()
    assert holder.wait(timeout=30) == 0
    assert not run.exists()  # released, and the directory it created for a run that never started is gone
    own = acquire(run, interrupt=False)
    try:
        assert own.took_over is None
    finally:
        own.release()


def test_a_killed_owner_on_this_host_is_taken_over_without_asking(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    assert _first_line(holder).startswith("owned ")
    holder.kill()
    holder.wait(timeout=30)
    assert read_owner(run).state == "gone"
    with hold(run, interrupt=False) as own:
        assert own.took_over["reason"] == f"pid {holder.pid} is not running on this host"
        assert own.took_over["previous"]["pid"] == holder.pid and own.took_over["take_over_flag"] is False


def test_a_reused_pid_is_not_mistaken_for_the_owner(tmp_path):
    run = tmp_path / "run"
    with hold(run, interrupt=False) as own:
        record = dataclasses.replace(own.record, token="older", pid_start="1")  # our pid, another process's start
    (run / OWNER).mkdir()
    (run / OWNER / RECORD).write_text(json.dumps(dataclasses.asdict(record)))
    owner = read_owner(run)
    assert (owner.state, owner.reason) == ("gone", f"pid {os.getpid()} now belongs to another process")


@pytest.mark.parametrize("stale", [False, True], ids=["free run", "stale owner"])
def test_racing_drivers_exactly_one_wins(tmp_path, stale):
    run, go = tmp_path / "run", tmp_path / "go"
    if stale:
        fake = _fake_owner(run, age=1000)
    racers = [_holder(run, "--go", str(go), *(["--take-over"] if stale else [])) for _ in range(4)]
    try:
        assert [_first_line(p) for p in racers] == ["waiting"] * 4  # every racer has started and waits
        go.touch()
        lines = [_first_line(p) for p in racers]
    finally:
        for p in racers:
            p.terminate()
    for p in racers:
        p.wait(timeout=30)
    owned = [line for line in lines if line.startswith("owned ")]
    assert len(owned) == 1, lines
    assert all(line.startswith("refused ") and "is in use by another driver" in line
               for line in lines if line not in owned), lines
    if stale:
        assert [p.name for p in run.glob(".owner.taken-*")] == [f".owner.taken-{fake.token}"]


def test_a_driver_that_lost_the_run_stops_before_its_next_write(tmp_path, monkeypatch):
    # A short bound (heartbeat every 0.25 s), long enough that a busy 2-core machine does not starve a live
    # holder's heartbeat past it.
    monkeypatch.setenv("SELFPLAY_OWNER_STALE_S", "3")
    run = tmp_path / "run"
    holder = _holder(run, "--probe", env={"SELFPLAY_OWNER_STALE_S": "3"})
    try:
        assert _first_line(holder).startswith("owned ")
        deadline = time.monotonic() + 60
        while not (run / "probe.txt").exists():
            assert time.monotonic() < deadline and holder.poll() is None, "the holder never wrote"
            time.sleep(0.05)
        assert (run / "probe.txt").read_text().startswith(f"holder {holder.pid} write ")
        with pytest.raises(OwnershipError, match="--take-over refuses a live owner"):
            acquire(run, take_over=True, interrupt=False)
        os.kill(holder.pid, signal.SIGSTOP)  # its heartbeat stalls (a frozen node, a suspended job)
        time.sleep(3.5)
        assert read_owner(run).state == "stale"
        with hold(run, take_over=True, interrupt=False) as own:
            assert own.took_over["previous"]["pid"] == holder.pid and own.took_over["take_over_flag"] is True
            write_text(run / "probe.txt", "taker\n")
            os.kill(holder.pid, signal.SIGCONT)
            out, _ = holder.communicate(timeout=30)
            assert holder.returncode == 3, out
            assert f"lost this driver lost ownership of run directory {run}: pid {os.getpid()} on host" in out
            assert "it stopped before its next write" in out
            assert (run / "probe.txt").read_text() == "taker\n"  # no write of the old owner after the take-over
            assert read_owner(run).record.token == own.record.token  # and it did not take the run back
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_ray_job_driver_names_its_job(monkeypatch):
    # what `ray job submit` puts in its driver's environment (ray/dashboard/modules/job/job_supervisor.py)
    config = {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_7f3a", "job_name": "raysubmit_7f3a"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(config))
    record = OwnerRecord.of_this_process()
    assert record.job == "raysubmit_7f3a" and record.who().endswith("(ray job raysubmit_7f3a)")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert OwnerRecord.of_this_process().job is None
