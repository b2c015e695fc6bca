"""End-to-end fixtures: a micro recipe that exercises every stage, the CLI driven as a user drives it, and
one LoRA quick-start run with experiment tracking that two test modules read."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

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
               env: dict[str, str | None] | None = None, cpus: set[int] | None = None,
               extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`selfplay run RECIPE --run-dir RUN_DIR [EXTRA...]` in its own session, optionally with a kill point
    (``SELFPLAY_KILL_AT``), environment changes (``env``: None unsets) and only the cores ``cpus`` (its CPU
    affinity, which everything it starts inherits); afterwards the whole session is killed, so the embedded
    Ray of a driver that died by SIGKILL does not outlive it. Its stdout holds stdout and stderr."""
    changes = {"SELFPLAY_KILL_AT": kill_at or None, **(env or {})}
    env = {k: v for k, v in os.environ.items() if k not in changes}
    env.update({k: v for k, v in changes.items() if v is not None})
    proc = subprocess.Popen(selfplay_cmd("run", str(recipe), "--run-dir", str(run_dir), *extra), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus))
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


# The LoRA quick start (tests/e2e/test_lora_quickstart.py), shrunk with `--set` (fewer prompts, a short warm
# start, ties kept so that a weak policy still yields pairs), and tracked (tests/e2e/test_tracking_run.py):
# wandb offline and mlflow into a local file store, no TensorBoard, pass@k/maj@k evaluation. One driver run
# read two ways, instead of two runs that each start Ray, a vLLM engine and a DeepSpeed learner.
LORA_TRACKED = ["iterations=1", "train.lora.r=8", "policy.warmstart.examples=256", "policy.warmstart.epochs=2",
                "generation.prompts_per_iteration=64", "generation.n=4", "generation.shard_size=64",
                "pairing.drop_ties=false", "evaluation.num_prompts=32", "evaluation.win_rate=false",
                "generation.replicas=1", "resources.threads_per_actor=1",  # one engine, one thread: not `auto`
                "sync.lora=adapter",  # `auto` is merged on CPU generators; the adapter path is what is checked
                "evaluation.k=4", "evaluation.temperature=1.0", "logging.backends=[wandb, mlflow]",
                "logging.project=e2e"]


@dataclass
class CliRun:
    run_dir: Path
    log: str  # stdout and stderr
    returncode: int
    mlruns: Path  # the mlflow file store


@pytest.fixture(scope="session")
def lora_tracked_run(tmp_path_factory) -> CliRun:
    """``selfplay run recipes/quickstart.yaml`` with :data:`LORA_TRACKED`; read it, never write into it."""
    root = tmp_path_factory.mktemp("lora-tracked")
    mlruns = root / "mlruns"
    sets = [*LORA_TRACKED, f"logging.mlflow_tracking_uri=file:{mlruns}"]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_ALLOW_FILE_STORE": "true",
           "WANDB_CONFIG_DIR": str(root / "wandb-config"), "WANDB_CACHE_DIR": str(root / "wandb-cache")}
    done = run_driver("recipes/quickstart.yaml", root / "run", timeout=900, env=env,
                      extra=tuple(a for kv in sets for a in ("--set", kv)))
    return CliRun(root / "run", done.stdout, done.returncode, mlruns)


@pytest.fixture(scope="session")
def chat_job(tmp_path_factory):
    """The guide's chat-dataset recipe on a Qwen2 checkpoint, submitted to a Ray head of its own with
    ``ray job submit`` (tests/e2e/ray_job.py); read it, never write into it."""
    from tests.e2e.ray_job import submitted_chat_run

    return submitted_chat_run(tmp_path_factory.mktemp("chat-job"))
