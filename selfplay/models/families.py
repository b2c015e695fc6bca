"""Tiny checkpoints of the model families users train, built offline, outside the Llama presets.

``build_family(out_dir, "qwen2")`` writes a standard Hugging Face directory (config, safetensors,
generation config, tokenizer with the family's special tokens and chat-template shape) that
``policy.path`` takes like a downloaded checkpoint. The architectures are the real transformers
classes; only the sizes are tiny (hidden 64, 2 layers, head_dim 32, GQA 2/1).

What each family exercises (where weight-sync and loading bugs live):

| family  | transformers class   | what differs from the presets                                      |
|---------|----------------------|--------------------------------------------------------------------|
| llama3  | LlamaForCausalLM     | Llama-3 rope scaling (``rope_type: llama3``), header-token template |
| qwen2   | Qwen2ForCausalLM     | q/k/v biases, **tied** embeddings, ChatML, no bos token             |
| qwen3   | Qwen3ForCausalLM     | q/k RMS norms, tied embeddings, think-block template                |
| mistral | MistralForCausalLM   | ``[INST]`` template, pad = unk                                      |
| gemma2  | Gemma2ForCausalLM    | embedding scaling, attention and final-logit soft-capping, sliding  |
|         |                      | window on alternate layers, ``(1 + w)`` norms, tied, Gemma turns    |
| phi3    | Phi3ForCausalLM      | fused ``qkv_proj`` and ``gate_up_proj`` (split by vLLM at load)     |

Choices:

* HF initialises biases to zero and norm weights to one; here every bias and norm weight gets seeded
  noise instead, so a bias or norm that a sync drops or maps to the wrong tensor changes the outputs
  (an all-zero bias would hide it).
* Weights are fp32 by default (``dtype="bfloat16"`` to build a bf16 checkpoint).
* The BPE vocabulary (512 by default) is trained on the project's synthetic corpus plus chat-like lines,
  so the templates' role words are single merges, as in real vocabularies.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from selfplay.atomic import replace_dir
from selfplay.models.family_tokenizers import build_family_tokenizer
from selfplay.models.tokenizer import default_corpus

DIMS: dict[str, Any] = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                            head_dim=32, intermediate_size=128, max_position_embeddings=512,
                            initializer_range=0.1)

FAMILIES: dict[str, dict[str, Any]] = {
    "llama3": dict(cls="LlamaForCausalLM", config="LlamaConfig", tokenizer="llama3", tied=False,
                   extra=dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 128})),
    "qwen2": dict(cls="Qwen2ForCausalLM", config="Qwen2Config", tokenizer="qwen2", tied=True, extra={}),
    "qwen3": dict(cls="Qwen3ForCausalLM", config="Qwen3Config", tokenizer="qwen3", tied=True, extra={}),
    "mistral": dict(cls="MistralForCausalLM", config="MistralConfig", tokenizer="mistral", tied=False,
                    extra=dict(sliding_window=None)),
    "gemma2": dict(cls="Gemma2ForCausalLM", config="Gemma2Config", tokenizer="gemma", tied=True,
                   extra=dict(query_pre_attn_scalar=32, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                              sliding_window=128, hidden_activation="gelu_pytorch_tanh")),
    "phi3": dict(cls="Phi3ForCausalLM", config="Phi3Config", tokenizer="phi3", tied=False, extra={}),
}


def family_corpus(seed: int = 0) -> list[str]:
    """The BPE training text: the synthetic corpus plus chat-like lines with role words."""
    rng = random.Random(seed)
    roles = ["system", "user", "assistant", "model", "You are a helpful assistant."]
    lines = [f"{rng.choice(roles)}\n\n{doc}" for doc in default_corpus(1500, seed)]
    return default_corpus(2000, seed) + lines


def build_family(out_dir: str | Path, family: str, *, seed: int = 0, vocab_size: int = 512,
                 dtype: str = "float32") -> Path:
    """Build a randomly initialised tiny checkpoint of ``family`` (see ``FAMILIES``) in ``out_dir``."""
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(FAMILIES)}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    spec = FAMILIES[family]
    tok = build_family_tokenizer(spec["tokenizer"], family_corpus(seed), vocab_size=vocab_size)
    config = getattr(transformers, spec["config"])(
        vocab_size=len(tok), tie_word_embeddings=spec["tied"], bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, dtype=dtype, **DIMS, **spec["extra"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, spec["cls"])(config)
        _perturb_biases_and_norms(model)
    model = model.to(getattr(torch, dtype)).eval()
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "selfplay_family.json").write_text(json.dumps({"family": family, "seed": seed}) + "\n")

    return replace_dir(Path(out_dir), write)


def _perturb_biases_and_norms(model: Any) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5)
            elif "norm" in name and p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
