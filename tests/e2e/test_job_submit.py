"""The cluster path: a real Ray head (`ray start --head`) and the run submitted with `ray job submit`.

The driver then joins the cluster through RAY_ADDRESS instead of starting its own Ray, the working
directory is uploaded by Ray, and the job must reach SUCCEEDED with its artifacts on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import MICRO, ROOT

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    temp = tempfile.mkdtemp(prefix="sp-head-", dir="/tmp")
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    start = [RAY, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             "--num-cpus=4", f"--temp-dir={temp}", "--include-dashboard=true", "--disable-usage-stats",
             # Ray's fixed agent port (52365) is taken when another Ray runs here; the head then answers every
             # job with "No available agent".
             f"--dashboard-agent-listen-port={_free_port()}"]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=120)
    address = f"http://127.0.0.1:{dash}"
    try:
        # `ray start` returns before the head's job agent accepts submissions ("No available agent").
        deadline = time.monotonic() + 120
        while subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True,
                             timeout=60).returncode != 0:
            assert time.monotonic() < deadline, "the Ray head never accepted job requests"
            time.sleep(2)
        yield address, env
    finally:
        _stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_head(temp: str) -> None:
    """End only this head's processes (their command lines name its temp dir). `ray stop --force` would
    end every Ray on the machine, including other tests' clusters and other users' jobs."""
    import psutil

    ours = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(temp in part for part in proc.info["cmdline"] or []):
                ours.extend([proc, *proc.children(recursive=True)])
    for proc in ours:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(ours, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _snapshot(dest: Path) -> Path:
    """The repo's files (tracked + untracked-not-ignored) copied aside, so nothing changes while Ray zips them."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_quickstart_through_ray_job_submit(ray_head, tmp_path):
    address, env = ray_head
    workdir = _snapshot(tmp_path / "src")
    recipe = dict(MICRO, iterations=1, name="job")
    recipe_path = tmp_path / "job.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 180
    while True:
        job_id = f"selfplay-test-{uuid.uuid4().hex[:8]}"
        cmd = [RAY, "job", "submit", "--address", address, "--submission-id", job_id, "--working-dir", ".", "--",
               sys.executable, "-m", "selfplay.cli", "run", str(recipe_path), "--run-dir", str(run_dir)]
        out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
        # A fresh head answers before its job agent is up; Ray's own message says to try again later.
        if "No available agent" not in out.stdout + out.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(address).get_job_status(job_id) == JobStatus.SUCCEEDED
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["iterations"]["0"]["complete"] is True
    assert (run_dir / "iter_000" / "policy" / "model.safetensors").exists()
