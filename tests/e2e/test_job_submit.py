"""The cluster path: a real Ray head (`ray start --head`) and the run submitted with `ray job submit`.

The driver then joins the cluster through RAY_ADDRESS instead of starting its own Ray, the working
directory is uploaded by Ray, and the job must reach SUCCEEDED with its artifacts on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
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
             "--num-cpus=4", f"--temp-dir={temp}", "--include-dashboard=true", "--disable-usage-stats"]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_quickstart_through_ray_job_submit(ray_head, tmp_path):
    address, env = ray_head
    recipe = dict(MICRO, iterations=1, name="job")
    recipe_path = tmp_path / "job.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = tmp_path / "run"
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--",
           sys.executable, "-m", "selfplay.cli", "run", str(recipe_path), "--run-dir", str(run_dir)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    assert "SUCCEEDED" in log, log[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["iterations"]["0"]["complete"] is True
    assert (run_dir / "iter_000" / "policy" / "model.safetensors").exists()
