"""The kill points the fault harness adds, checked alone and fast: ``write@k:n`` SIGKILLs a real process in
the middle of an artifact write (temporary written, not renamed), and ``hang@k`` shortens the generator
pool's shard deadline so a hung replica is noticed in test time. No Ray: the harness runs them for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from selfplay.atomic import TMP_INFIX
from selfplay.loop import faults
from selfplay.loop.rundir import RunDir, read_json, read_parquet, write_json

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import sys
from pathlib import Path
import pyarrow as pa
from selfplay.loop.rundir import write_json, write_parquet
run = Path(sys.argv[1])
write_json(run / "iter_001" / "first.json", {"n": 1})
write_json(run / "iter_000" / "other.json", {"n": 0})  # another iteration's directory: not counted
write_json(run / "manifest.json", {"n": 0})  # the run's root: not counted
write_parquet(run / "iter_001" / "second.parquet", pa.table({"x": list(range(1000))}))
write_json(run / "iter_001" / "third.json", {"n": 3})
"""


def _writer(run: Path, kill_at: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    if kill_at:
        env[faults.ENV] = kill_at
    return subprocess.run([sys.executable, "-c", WRITER, str(run)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_kill_during_an_artifact_write_leaves_the_old_state_and_a_rerun_writes_it(tmp_path):
    run = tmp_path / "run"
    result = _writer(run, "write@1:2")
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert f"killed during the write of {run / 'iter_001' / 'second.parquet'}" in result.stderr
    it = run / "iter_001"
    assert read_json(it / "first.json") == {"n": 1} and read_json(run / "iter_000" / "other.json") == {"n": 0}
    assert not (it / "second.parquet").exists() and not (it / "third.json").exists()
    (tmp,) = it.glob(f".second.parquet{TMP_INFIX}*")  # written in full, never renamed onto the artifact
    assert read_parquet(tmp).num_rows == 1000
    # the same command again, with no fault: every artifact is written, the leftover is never read
    assert _writer(run, None).returncode == 0
    assert read_parquet(it / "second.parquet").column("x").to_pylist() == list(range(1000))
    assert read_json(it / "third.json") == {"n": 3}
    # a driver taking the run removes the leftover (RunDir.remove_leftovers, called at its start)
    assert RunDir(run).remove_leftovers() == [tmp] and not tmp.exists() and (it / "second.parquet").exists()


def test_write_points_count_per_iteration_and_do_nothing_unset(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    write_json(tmp_path / "iter_001" / "a.json", {})  # unset: an ordinary write
    result = _writer(tmp_path / "run", "write@2:1")  # no write into iter_002: nothing is killed
    assert result.returncode == 0, result.stderr
    assert "killed" not in result.stderr


def test_a_hang_fault_shortens_the_pool_deadline_only_when_configured(monkeypatch):
    pool = SimpleNamespace(shard_timeout_s=1800.0)
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.hang_deadline(pool)
    assert pool.shard_timeout_s == 1800.0
    monkeypatch.setenv(faults.ENV, "train@0:1,generate@1:2")
    faults.hang_deadline(pool)
    assert pool.shard_timeout_s == 1800.0
    faults.hang_point("generate", 1)  # no hang configured: a no-op that needs no Ray
    monkeypatch.setenv(faults.ENV, "train@0:1, hang@2")
    faults.hang_deadline(pool)
    assert pool.shard_timeout_s == faults.HANG_DEADLINE_S < 1800.0
    faults.hang_point("train", 2)  # only the generate stage hangs a replica
