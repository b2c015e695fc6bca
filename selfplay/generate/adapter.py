"""What a generator needs to serve a LoRA adapter pushed by an adapter-only sync (no engine imported).

With ``train.lora`` and ``sync.lora: adapter``, a sync ships the adapter tensors alone, PEFT-named
(``base_model.model.<module>.lora_A.weight`` / ``lora_B``, as ``PeftModel.save_pretrained`` writes
them), in the same checksummed buckets as full weights. The generator checks the names against its own
model (:func:`adapter_names`: every targeted linear layer, both matrices, nothing else), then writes a
PEFT adapter directory (:func:`write_adapter_dir`) that vLLM loads with ``LoRARequest(name, id, path)``.
A directory, not tensors handed to vLLM's LoRA manager inside the worker, because the directory is
vLLM's public way in (the manager is internal and changes between releases) and an adapter is small
(tens of MB at 7B), so writing it costs little. Each version gets a new integer id, so vLLM never
serves a cached copy of an older adapter under the same id.

:class:`AdapterSpec` is what the generators are started with (rank, alpha, targets); it must match the
learner's ``train.lora``, which is where both are built from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEFT_PREFIX = "base_model.model."
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's LoRA config accepts (max_lora_rank)


@dataclass(frozen=True)
class AdapterSpec:
    """The adapters a generator serves: the learner's ``train.lora`` (``r``, ``alpha``, ``target_modules``)."""

    r: int
    alpha: float
    target_modules: tuple[str, ...]

    @classmethod
    def of(cls, lora: Any) -> AdapterSpec:
        return cls(int(lora.r), float(lora.alpha), tuple(lora.target_modules))

    def max_lora_rank(self) -> int:
        """The smallest rank vLLM accepts that holds ``r``."""
        for rank in VLLM_RANKS:
            if rank >= self.r:
                return rank
        raise ValueError(f"train.lora.r={self.r}: vLLM serves adapters up to rank {VLLM_RANKS[-1]}")

    def peft_config(self) -> dict[str, Any]:
        """``adapter_config.json`` as PEFT writes it, with the fields vLLM reads."""
        return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.r, "lora_alpha": self.alpha,
                "target_modules": sorted(self.target_modules), "bias": "none", "lora_dropout": 0.0,
                "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None,
                "base_model_name_or_path": None}


def adapter_names(checkpoint_names: Iterable[str], targets: Sequence[str]) -> list[str]:
    """The PEFT names of the adapter tensors for a model whose weights are ``checkpoint_names`` (HF names):
    ``lora_A`` and ``lora_B`` for every ``<module>.weight`` whose last module name is in ``targets``."""
    wanted = set(targets)
    out = []
    for name in checkpoint_names:
        if not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        if module.rsplit(".", 1)[-1] in wanted:
            out += [f"{PEFT_PREFIX}{module}.lora_A.weight", f"{PEFT_PREFIX}{module}.lora_B.weight"]
    return sorted(out)


def write_adapter_dir(out_dir: str | Path, named: Sequence[tuple[str, Any]], spec: AdapterSpec) -> Path:
    """A PEFT adapter directory (``adapter_config.json``, ``adapter_model.safetensors``) of ``named``
    tensors; the tensors are copied into the file (they may be read-only views of a received bucket)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(spec.peft_config(), indent=1) + "\n")
    save_file({n: t.contiguous().clone() for n, t in named}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    return out
