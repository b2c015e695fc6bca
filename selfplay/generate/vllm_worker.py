"""The vLLM worker extension: the only code that runs *inside* a vLLM worker.

vLLM mixes this class into its worker (``LLM(worker_extension_cls=...)``) and the engine calls its
methods through ``llm.collective_rpc``, once per worker (one per tensor-parallel rank). Weights are
pushed with the worker's ``reload_weights(weights_iterator=..., is_checkpoint_format=True)``: it takes
Hugging Face checkpoint names and redoes the CPU backend's repacking and the tensor-parallel sharding.
(``model.load_weights`` alone fails on the CPU backend, whose linear weights are repacked.)

The payload is either ``(name, tensor)`` pairs (in-process engine: no copy) or safetensors bucket
bytes (engine in a separate process: tensors would not survive the RPC serialisation, bytes do). The
caller has already verified every bucket, so decoding here does not re-hash, and it does not copy
either: the tensors are views into the received bytes (:func:`selfplay.sync.buckets.bucket_tensors`),
and ``reload_weights`` copies them into the model's own parameters.

Importing this module imports neither vllm nor torch.
"""

from __future__ import annotations

from typing import Any


class SelfplayWorkerExtension:
    """Methods added to every vLLM worker (``self`` is the worker)."""

    def selfplay_load_weights(self, payload: list[Any]) -> int:
        """Load a full set of weights in checkpoint format; returns the number of tensors loaded."""
        weights = _as_named_tensors(payload)
        self.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        return len(weights)

    def selfplay_parameter_count(self) -> int:
        """Parameters of this worker's model shard (a cheap liveness/shape check)."""
        return sum(p.numel() for p in self.model_runner.get_model().parameters())


def _as_named_tensors(payload: list[Any]) -> list[tuple[str, Any]]:
    if payload and isinstance(payload[0], bytes | bytearray | memoryview):
        from selfplay.sync.buckets import bucket_tensors

        out: list[tuple[str, Any]] = []
        for blob in payload:
            out.extend(bucket_tensors(blob).items())
        return out
    return list(payload)
