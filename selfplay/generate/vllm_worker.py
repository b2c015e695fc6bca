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

Tied embeddings (Qwen2/Qwen3 small models, Gemma): the checkpoint has no ``lm_head.weight``; vLLM's
output head shares the embedding's weight. On the CPU backend every linear layer, the head included,
computes with a packed copy of its weight made by ``process_weights_after_loading``, and
``reload_weights`` redoes that only for layers whose weights it loaded. The tied head loads nothing,
so it kept computing logits with the *old* embedding (measured: probe log-probs 0.58 off after one DPO
round on a tied Qwen2). :func:`refresh_tied_head` repacks the head after every load; on GPUs the
repacking step is a no-op.

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
        refresh_tied_head(self.model_runner.get_model())
        return len(weights)


def refresh_tied_head(model: Any) -> bool:
    """Redo the output head's post-load processing when it shares the input embedding's weight (a tied
    model); returns whether it did. Raises if the config says tied but the two no longer share storage."""
    config = getattr(model, "config", None)
    head = getattr(model, "lm_head", None)
    if not getattr(config, "tie_word_embeddings", False) or head is None or not hasattr(head, "weight"):
        return False
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if embed is None or head.weight.data_ptr() != embed.weight.data_ptr():
        raise RuntimeError("tied model: after the weight load, lm_head no longer shares the embedding's weight")
    head.quant_method.process_weights_after_loading(head)
    return True


def _as_named_tensors(payload: list[Any]) -> list[tuple[str, Any]]:
    if payload and isinstance(payload[0], bytes | bytearray | memoryview):
        from selfplay.sync.buckets import bucket_tensors

        out: list[tuple[str, Any]] = []
        for blob in payload:
            out.extend(bucket_tensors(blob).items())
        return out
    return list(payload)
