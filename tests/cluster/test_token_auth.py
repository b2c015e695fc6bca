"""A two-node Ray cluster with token authentication, set up as the README's cluster section says.

``ray start --head`` (no CPUs: only the job's driver runs there) and ``ray start --address`` for a
worker node with 4 CPUs, both with ``RAY_AUTH_MODE=token`` and the token in a file of the test's own
(``RAY_AUTH_TOKEN_PATH``; nothing in ``~/.ray``), the dashboard bound to loopback. Each node's agent
gets a free port of its own: Ray's fixed default (52365) is taken when another Ray runs on the machine,
and the head then answers every job with "No available agent". Then:

* without the token, the Jobs API refuses: ``ray job submit`` fails, a bare HTTP request gets 401/403,
  a wrong token is refused as well, and no job is recorded;
* with the token, ``ray job submit`` runs the quick start (the micro recipe, one iteration) to
  SUCCEEDED. Every actor has to go to the worker node (the head has no CPUs), and the driver joins the
  cluster without touching its authentication.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import MICRO
from tests.e2e.micro_run import tagged_processes
from tests.e2e.ray_job import RAY
from tests.e2e.ray_job import free_port as _free_port
from tests.e2e.ray_job import snapshot as _snapshot
from tests.e2e.ray_job import stop_head as _stop_head

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
              "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def _base_env(tag: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _AUTH_VARS}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "SELFPLAY_TEST_TAG": tag}


@pytest.fixture
def token_cluster():
    tag = uuid.uuid4().hex
    temp = tempfile.mkdtemp(prefix="sp-auth-", dir="/tmp")
    token_file = Path(temp) / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = {**_base_env(tag), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    port, dash = _free_port(), _free_port()
    try:
        head = subprocess.run([RAY, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
                               f"--dashboard-port={dash}", "--num-cpus=0", f"--temp-dir={temp}",
                               f"--dashboard-agent-listen-port={_free_port()}",
                               "--include-dashboard=true", "--disable-usage-stats"],
                              env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stdout[-3000:] + head.stderr[-3000:]
        gcs = re.search(r"--address='([^']+)'", head.stdout + head.stderr)
        assert gcs, head.stdout[-3000:]
        worker = subprocess.run([RAY, "start", f"--address={gcs.group(1)}", "--num-cpus=4", "--disable-usage-stats",
                                 f"--dashboard-agent-listen-port={_free_port()}"],
                                env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
        address = f"http://127.0.0.1:{dash}"
        # `ray start` returns before the head's job agent takes jobs (under load it took minutes here):
        # a trivial job, with the token, until one runs.
        deadline = time.monotonic() + 420
        while True:
            ready = subprocess.run([RAY, "job", "submit", "--address", address, "--", sys.executable, "-c", "pass"],
                                   env=env, capture_output=True, text=True, timeout=300)
            if ready.returncode == 0:
                break
            assert time.monotonic() < deadline, f"the Ray head never ran a job: {ready.stderr[-2000:]}"
            time.sleep(3)
        yield address, env, token_file.read_text(), tag
    finally:
        _stop_head(temp)
        for proc in tagged_processes(tag):  # the worker node's processes name no temp dir of the head
            with contextlib.suppress(Exception):
                proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _http_status(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _submit(address: str, env: dict[str, str], workdir: Path, job_id: str, *args: str):
    cmd = [RAY, "job", "submit", "--address", address, "--submission-id", job_id, "--working-dir", ".", "--",
           sys.executable, "-m", "selfplay.cli", *args]
    deadline = time.monotonic() + 180
    while True:
        out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1500)
        # A fresh head answers before its job agent is up; Ray's own message says to try again later.
        if "No available agent" not in out.stdout + out.stderr or time.monotonic() > deadline:
            return out
        time.sleep(3)


def test_jobs_need_the_token_and_the_quick_start_runs_with_it(token_cluster, tmp_path):
    address, env, token, tag = token_cluster
    workdir = _snapshot(tmp_path / "src")
    recipe = {**MICRO, "name": "token", "iterations": 1, "evaluation": {"num_prompts": 16}}
    recipe_path = tmp_path / "token.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = tmp_path / "run"

    # Without the token: refused at the door, by the CLI and by plain HTTP, and with a wrong token too.
    assert _http_status(f"{address}/api/jobs/", None) in (401, 403)
    assert _http_status(f"{address}/api/jobs/", secrets.token_hex(32)) in (401, 403)
    assert _http_status(f"{address}/api/jobs/", token) == 200
    refused = _submit(address, _base_env(tag), workdir, f"refused-{uuid.uuid4().hex[:8]}",
                      "run", str(recipe_path), "--run-dir", str(run_dir))
    log = refused.stdout + refused.stderr
    assert refused.returncode != 0, log[-3000:]
    assert re.search(r"401|403|[Uu]nauthori[sz]ed|[Aa]uthentication", log), log[-3000:]
    assert not run_dir.exists()
    listed = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True, text=True,
                            timeout=60)
    assert "refused-" not in listed.stdout, listed.stdout[-2000:]

    # With the token: the quick start runs to the end on the worker node.
    job_id = f"selfplay-token-{uuid.uuid4().hex[:8]}"
    out = _submit(address, env, workdir, job_id, "run", str(recipe_path), "--run-dir", str(run_dir))
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    status = subprocess.run([RAY, "job", "status", "--address", address, job_id], env=env, capture_output=True,
                            text=True, timeout=60)
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, (status.stdout + status.stderr)[-2000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["iterations"]["0"]["complete"] is True
    assert (run_dir / "iter_000" / "policy" / "model.safetensors").exists()
