"""Named sizes of the tiny Llama-family policies built without a hub.

Every preset uses head_dim 32 or 64 (vLLM's CPU attention supports these), grouped-query attention
(``num_key_value_heads`` < ``num_attention_heads``, as in current Llama/Qwen checkpoints, so the GQA code
paths of HF, vLLM and DeepSpeed are exercised), untied input/output embeddings and a modest context.

``PARAM_RANGES`` is the intended parameter count (embeddings included) with the char tokenizer (104
tokens); a BPE vocabulary (1024 by default) adds ``2 * vocab_size * hidden_size``. The tests check that
built models fall in these ranges.

| preset | hidden | layers | heads/kv | head_dim | ffn  | params (char) | use                      |
|--------|--------|--------|----------|----------|------|---------------|--------------------------|
| nano   | 128    | 4      | 4/2      | 32       | 384  | ~0.81M        | fast tests               |
| tiny   | 256    | 6      | 4/2      | 64       | 768  | ~4.8M         | quick start              |
| small  | 384    | 8      | 6/2      | 64       | 1152 | ~14M          | learner benchmark        |
| medium | 640    | 12     | 10/2     | 64       | 1728 | ~52M          | sync benchmark           |
| large  | 768    | 16     | 12/4     | 64       | 2048 | ~101M         | sync benchmark           |
"""

from __future__ import annotations

from typing import Any

MAX_POSITION_EMBEDDINGS = 512

PRESETS: dict[str, dict[str, int]] = {
    "nano": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=32, intermediate_size=384),
    "tiny": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, intermediate_size=768),
    "small": dict(hidden_size=384, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2,
                  head_dim=64, intermediate_size=1152),
    "medium": dict(hidden_size=640, num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=2,
                   head_dim=64, intermediate_size=1728),
    "large": dict(hidden_size=768, num_hidden_layers=16, num_attention_heads=12, num_key_value_heads=4,
                  head_dim=64, intermediate_size=2048),
}

# Intended parameter counts (inclusive bounds) with the char tokenizer.
PARAM_RANGES: dict[str, tuple[int, int]] = {
    "nano": (500_000, 3_000_000),
    "tiny": (3_000_000, 6_000_000),
    "small": (10_000_000, 30_000_000),
    "medium": (40_000_000, 65_000_000),
    "large": (85_000_000, 120_000_000),
}


def llama_config(preset: str, vocab_size: int, *, bos_token_id: int, eos_token_id: int,
                 pad_token_id: int, dtype: str = "float32") -> Any:
    """A ``transformers.LlamaConfig`` for ``preset`` with the given vocabulary and special ids."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; expected one of {sorted(PRESETS)}")
    dims = PRESETS[preset]
    if dims["hidden_size"] != dims["num_attention_heads"] * dims["head_dim"]:  # pragma: no cover
        raise AssertionError(f"preset {preset}: hidden_size != heads * head_dim")
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        initializer_range=0.02,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        dtype=dtype,
        **dims,
    )


def estimate_parameters(preset: str, vocab_size: int) -> int:
    """Parameter count of ``preset`` with ``vocab_size`` tokens, computed from the dimensions."""
    d = PRESETS[preset]
    h, hd, ff = d["hidden_size"], d["head_dim"], d["intermediate_size"]
    attn = h * d["num_attention_heads"] * hd * 2 + h * d["num_key_value_heads"] * hd * 2
    layer = attn + 3 * h * ff + 2 * h
    return d["num_hidden_layers"] * layer + 2 * vocab_size * h + h
