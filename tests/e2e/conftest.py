"""End-to-end fixtures: a micro recipe that exercises every stage in about half a minute on 2 cores."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

MICRO = {
    "name": "micro",
    "seed": 0,
    "iterations": 2,
    "policy": {"preset": "nano", "tokenizer": "char",
               "warmstart": {"examples": 256, "epochs": 1, "learning_rate": 3.0e-3, "micro_batch_size": 32}},
    "task": {"type": "arithmetic", "level": 1},
    "generation": {"backend": "vllm", "prompts_per_iteration": 48, "n": 4, "temperature": 1.0, "max_tokens": 6,
                   "shard_size": 16, "replicas": 1},
    "judge": {"type": "verifier"},
    "pairing": {"strategy": "best_worst", "drop_ties": False},
    "train": {"loss": {"type": "sigmoid", "beta": 0.1}, "reference": "previous", "learning_rate": 1.0e-3,
              "micro_batch_size": 16, "warmup_ratio": 0.0},
    "evaluation": {"num_prompts": 48},
    # One engine and one thread per actor, pinned: `auto` would give this machine's every core to each stage
    # (a second vLLM engine per run); the one e2e run of `auto` is tests/e2e/test_no_pairs.py's early stop.
    "resources": {"threads_per_actor": 1},
}


def selfplay_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "selfplay.cli", *args]


def run_driver(recipe, run_dir, kill_at: str | None = None, timeout: float = 600,
               env: dict[str, str | None] | None = None, cpus: set[int] | None = None) -> subprocess.CompletedProcess:
    """`selfplay run RECIPE --run-dir RUN_DIR` in its own session, optionally with a kill point
    (``SELFPLAY_KILL_AT``), environment changes (``env``: None unsets) and only the cores ``cpus`` (its CPU
    affinity, which everything it starts inherits); afterwards the whole session is killed, so the embedded
    Ray of a driver that died by SIGKILL does not outlive it."""
    changes = {"SELFPLAY_KILL_AT": kill_at or None, **(env or {})}
    env = {k: v for k, v in os.environ.items() if k not in changes}
    env.update({k: v for k, v in changes.items() if v is not None})
    proc = subprocess.Popen(selfplay_cmd("run", str(recipe), "--run-dir", str(run_dir)), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus))
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
