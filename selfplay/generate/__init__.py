"""The generate stage: sample ``n`` completions per prompt from the current policy.

* :mod:`~selfplay.generate.types`: ``Sampling`` (from ``GenerationConfig``) and ``Completion`` records.
* :mod:`~selfplay.generate.vllm_engine` (+ ``vllm_worker``): the only code touching vLLM.
* :mod:`~selfplay.generate.hf_engine`: the same interface on transformers (``backend: hf``, test reference).
* :mod:`~selfplay.generate.shards`: generations as atomic parquet shards, resumable.
* :mod:`~selfplay.generate.weights`: verification of a whole weight sync before it is loaded.

An engine has ``generate(prompts, sampling, first_index) -> list[list[Completion]]``,
``load_buckets(blobs, version) -> checksum``, ``probe_logps(sequences)``, ``version``, ``checksum`` and
``info()``. Ray actors around engines live in ``actors/generator.py``. Importing this package imports
neither vLLM nor Ray (nor torch): engines are built by :func:`make_engine` on demand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.generate.types import Completion, Prompt, Sampling, encode_prompts, prompt_of

BACKENDS = ("vllm", "hf")


def make_engine(
    backend: str,
    model_path: str | Path,
    *,
    dtype: str = "auto",
    max_model_len: int = 512,
    seed: int = 0,
    version: int = 0,
    tensor_parallel_size: int = 1,
    **kwargs: Any,
) -> Any:
    """Build the engine for ``backend`` (``vllm`` or ``hf``) on a local HF model directory."""
    if backend == "vllm":
        from selfplay.generate.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            version=version,
            tensor_parallel_size=tensor_parallel_size,
            **kwargs,
        )
    if backend == "hf":
        import torch

        from selfplay.generate.hf_engine import HFEngine

        if tensor_parallel_size != 1:
            raise ValueError("generation.tensor_parallel_size > 1 needs backend vllm")
        torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
        return HFEngine(model_path, dtype=torch_dtype, max_model_len=max_model_len, version=version, **kwargs)
    raise ValueError(f"unknown generation backend {backend!r}; expected one of {BACKENDS}")


__all__ = ["BACKENDS", "Completion", "Prompt", "Sampling", "encode_prompts", "make_engine", "prompt_of"]
