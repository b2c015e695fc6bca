"""Process environment defaults shared by the CLI, the actors and the tests.

Everything here is a *default* (``os.environ.setdefault``): a user's own setting always wins. The
choices come from measurements on 2-core CPU machines (docs/benchmarks.md): unpinned torch threads
under contention slowed a DPO step many times over, libgomp's spin-waiting slowed a two-thread round
under load (``python -m bench.threads``; so ``OMP_WAIT_POLICY=PASSIVE``, unless the user set it or
``GOMP_SPINCOUNT``), vLLM's default KV cache is far larger than a tiny model needs, and nothing may ever
reach a model hub. Compiled DeepSpeed ops and vLLM's cache stay in their default per-user cache folders
(``~/.cache``) so a fresh clone on the same machine reuses them.

Ray's authentication is never set here: a cluster the driver joins keeps its own mode. Only the
embedded single-machine Ray of a local run gets :func:`embedded_ray_env`: every Ray process bound to
loopback, and token authentication with a token made for this process (unless the user chose a mode or
a token), so nobody on the network, and no other local user without the token, can reach it. The token
lives only in this process's environment (inherited by the Ray processes it starts): Ray's own default
would write ``~/.ray/auth_token``, which then switches token mode on for every later ``ray start`` of
that user.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator


def setup_env(threads: int | None = None) -> None:
    """Set offline, cache and thread defaults for this process and the processes it starts.

    ``threads``: torch/OpenMP threads for this process (``None`` leaves the current setting).
    """
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "1",
        "DO_NOT_TRACK": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        # OpenMP threads that finish a parallel region sleep instead of spinning: a spinning thread holds a
        # core its partner needs when another process (Ray's daemons, a neighbour) took the partner's
        # core. libgomp reads it when it loads, so it reaches the actors Ray starts after this process.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover - torch is a core dependency
            pass


_TOKEN: str | None = None  # one per process: Ray caches the token it loaded, so it must not change


def embedded_ray_env() -> dict[str, str]:
    """Environment for an embedded (single-machine) Ray: loopback only, token authentication.

    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray take 127.0.0.1 as the node address (what it does
    on macOS), and its GCS, raylets, workers and agents then listen on loopback only; on Linux Ray
    otherwise resolves even an explicit 127.0.0.1 to the machine's address and listens on every
    interface. A user's own ``RAY_AUTH_MODE`` or token is kept.
    """
    global _TOKEN
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    if "RAY_AUTH_MODE" not in os.environ:
        env["RAY_AUTH_MODE"] = "token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        _TOKEN = _TOKEN or secrets.token_hex(32)
        env["RAY_AUTH_TOKEN"] = _TOKEN
    return env


@contextlib.contextmanager
def embedded_ray_environment() -> Iterator[dict[str, str]]:
    """Apply :func:`embedded_ray_env` for as long as an embedded Ray runs, then restore the environment.

    Ray reads these settings when it is imported; if it already is, its cached view is updated the way
    Ray itself does when it turns token mode on (``Config.initialize``), and restored on the way out, so
    a later connection to a real cluster from this process sees the user's own settings.
    """
    env = embedded_ray_env()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    _sync_ray_with_environment()
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _sync_ray_with_environment()


def _sync_ray_with_environment() -> None:
    """Make an already imported Ray see the current environment (it reads it once, at import)."""
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is None:
        return
    flag = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    default = sys.platform not in ("darwin", "win32")
    constants.ENABLE_RAY_CLUSTER = default if flag is None else flag.lower() in ("1", "true")
    from ray._raylet import Config

    Config.initialize("")
