"""Process environment defaults shared by the CLI, the actors and the tests.

Everything here is a *default* (``os.environ.setdefault``): a user's own setting always wins. The
choices come from measurements on 2-core CPU machines (see README): unpinned torch threads under
contention slowed a DPO step 5-50x, vLLM's default KV cache is far larger than a tiny model needs, and
nothing may ever reach a model hub. Compiled DeepSpeed ops and vLLM's cache stay in their default
per-user cache folders (``~/.cache``) so a fresh clone on the same machine reuses them.
"""

from __future__ import annotations

import os


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
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "1",
        "DO_NOT_TRACK": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover - torch is a core dependency
            pass
