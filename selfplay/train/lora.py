"""LoRA learners: the policy wrapped with PEFT adapters, trained under DeepSpeed, exported merged.

``train.lora.r > 0`` turns it on (``r: 0`` is full fine-tuning and none of this runs); the learner reaches
it through one seam, :class:`selfplay.train.variant.LoraWeights`. PEFT is imported lazily, so
``import selfplay.train`` does not need it. Choices:

* **Only the adapters train.** ``get_peft_model`` freezes every base weight; the learner's AdamW then holds
  only the adapter parameters, so ZeRO 0-3 shard (and offload) adapter gradients and moments only.
* **The base is always the reference policy.** With ``reference: initial`` the base stays the initial
  policy for the whole run (one adapter, trained on across iterations), and the reference log-probs for
  iteration k > 0 come from the same network with the adapters disabled: no second copy of the weights.
* **``reference: previous`` merges into the base** at the start of each new preference round (and a warm
  start is always merged when it ends): base += (alpha / r) B A, then fresh adapters. Chosen over keeping
  the previous adapters as a frozen second adapter because (1) the base then *is* the previous policy, so
  the reference is free in the same way as with ``initial``; (2) the forward pass stays one adapter per
  layer instead of growing by one frozen adapter per iteration; (3) the policy's total change is no longer
  confined to rank r (each iteration adds its own rank-r update, as ReLoRA does). The price is one gather
  and one engine rebuild per iteration, and an exported adapter that applies to the previous iteration's
  policy (its ``adapter_config.json`` names that directory when the learner knows it).
* **Three exports** (``export_part``). The HF directory and a ``merged`` sync hold ordinary HF-named
  weights with the adapters folded in (``policy``), streamed one layer at a time (gathered one parameter at
  a time under ZeRO-3), so vLLM sees a plain model. An adapter-only sync (``sync.lora: adapter``) ships
  ``adapter``: the PEFT-named adapter tensors alone, which an ``enable_lora`` vLLM engine serves on the
  base it holds, and ``base`` (the base weights without the adapters) once whenever the generators' base
  is not the learner's (:meth:`Learner.lora_base` names it). The HF directory also gets ``adapter/``, a
  standard PEFT adapter directory (``PeftModel.from_pretrained(base, dir)`` loads it).
* **Resume**: DeepSpeed's checkpoint holds the adapters and their optimizer state. A learner started from
  an exported policy directory whose ``adapter/`` names an existing base (``reference: initial``) rebuilds
  base + adapter, so a restarted run holds the same network, with the same base, as the one that stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from selfplay.train.engine import iter_full_params

log = logging.getLogger(__name__)
ADAPTER_DIR = "adapter"
_PREFIX = "base_model.model."
_PARTS = ((".base_layer.weight", "W"), (".lora_A.default.weight", "A"), (".lora_B.default.weight", "B"))


def enabled(cfg: Any) -> bool:
    lora = getattr(cfg, "lora", None)
    return lora is not None and lora.r > 0


def is_peft(module: Any) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "disable_adapter")


# ------------------------------------------------------------------------------------------ build
def check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    """Raise naming every target that is not the last name component of one of the model's linear layers."""
    linear = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                     if isinstance(mod, torch.nn.Linear)})
    bad = [t for t in targets if t not in linear]
    if bad:
        raise ValueError(f"train.lora.target_modules: {bad} are not linear layers of this model "
                         f"({type(model).__name__}); its linear layers are: {', '.join(linear)}")


def base_source(model_path: str | Path, cfg: Any) -> tuple[Path, Path | None]:
    """(directory to load the base from, adapter directory to load or None).

    An exported policy with ``adapter/`` whose config names an existing base, under ``reference: initial``,
    is rebuilt as that base + the adapter; anything else is the base itself with fresh adapters.
    """
    path = Path(model_path)
    adapter = path / ADAPTER_DIR
    if not enabled(cfg) or cfg.reference != "initial" or not (adapter / "adapter_config.json").is_file():
        return path, None
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        return path, None
    return Path(base), adapter


def wrap(model: torch.nn.Module, cfg: Any, adapter: Path | None, seed: int = 0) -> Any:
    """The model with PEFT adapters per ``cfg.lora`` (and ``adapter``'s weights when given).

    The adapters' random init is seeded from ``seed`` (every rank builds the same adapters, and a
    restarted learner the same ones as before), without touching the global RNG stream."""
    from peft import LoraConfig, get_peft_model

    lc = cfg.lora
    check_targets(model, lc.target_modules)
    peft_cfg = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
                          bias="none", task_type="CAUSAL_LM")
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need an input grad
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(model, peft_cfg)
    if adapter is not None:
        _load_adapter(model, adapter, peft_cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA r=%d on %s: %d trainable of %d parameters (%.3f%%)", lc.r, ",".join(lc.target_modules),
             trainable, total, 100.0 * trainable / max(total, 1))
    return model


def _load_adapter(model: Any, adapter: Path, peft_cfg: Any) -> None:
    from peft.utils import set_peft_model_state_dict

    saved = json.loads((adapter / "adapter_config.json").read_text())
    want = {"r": peft_cfg.r, "lora_alpha": peft_cfg.lora_alpha, "target_modules": sorted(peft_cfg.target_modules)}
    have = {"r": saved.get("r"), "lora_alpha": saved.get("lora_alpha"),
            "target_modules": sorted(saved.get("target_modules") or [])}
    if have != want:
        raise ValueError(f"adapter {adapter} was trained with {have}, but train.lora asks for {want}")
    result = set_peft_model_state_dict(model, load_file(str(adapter / "adapter_model.safetensors")))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"adapter {adapter} does not fit the model: missing {missing[:4]}, "
                           f"unexpected {list(result.unexpected_keys)[:4]}")


# ----------------------------------------------------------------------------------------- weights
def merge_stream(named: Iterator[tuple[str, torch.Tensor | None]], scaling: float, dtype: torch.dtype | None
                 ) -> Iterator[tuple[str, torch.Tensor | None]]:
    """PEFT-named parameters -> HF-named merged ones: ``W + scaling * B @ A`` per adapted layer.

    Pure tensor math on a stream: a layer's base weight waits until both its adapter matrices have passed
    (PEFT lists them right after it), so at most one layer is buffered. ``None`` tensors (non-zero ranks)
    pass through as ``None``. The merge is in fp32; ``dtype`` is applied after.
    """
    pending: dict[str, dict[str, torch.Tensor | None]] = {}

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return t if t is None or dtype is None or not t.is_floating_point() else t.to(dtype)

    for name, tensor in named:
        hf = name.removeprefix(_PREFIX)
        for part, key in _PARTS:
            if hf.endswith(part):
                layer = hf[: -len(part)]
                slot = pending.setdefault(layer, {})
                slot[key] = tensor
                if len(slot) == 3:
                    del pending[layer]
                    w, a, b = slot["W"], slot["A"], slot["B"]
                    merged = None if w is None else (w.float() + scaling * (b.float() @ a.float())).to(w.dtype)
                    yield layer + ".weight", cast(merged)
                break
        else:
            yield hf.replace(".base_layer.", "."), cast(tensor)
    if pending:
        raise RuntimeError(f"adapter layers without both LoRA matrices: {sorted(pending)[:4]}")


def scaling(module: Any) -> float:
    peft_cfg = module.peft_config["default"]
    return float(peft_cfg.lora_alpha) / float(peft_cfg.r)


def hf_params(engine: Any, dtype: torch.dtype | None, to_all: bool = False, copy: bool = True
              ) -> Iterator[tuple[str, torch.Tensor | None]]:
    """Full HF-named weights of the engine's model, adapters merged when it is a PEFT model. Collective.
    ``copy=False``: see :func:`~selfplay.train.engine.iter_full_params` (a PEFT model's are always copies)."""
    if not is_peft(engine.module):
        yield from iter_full_params(engine, dtype, to_all=to_all, copy=copy)
        return
    yield from merge_stream(iter_full_params(engine, None, to_all=to_all), scaling(engine.module), dtype)


def base_stream(named: Iterator[tuple[str, torch.Tensor | None]], dtype: torch.dtype | None
                ) -> Iterator[tuple[str, torch.Tensor | None]]:
    """PEFT-named parameters -> the HF-named base weights alone (adapter matrices dropped, not merged)."""
    for name, tensor in named:
        if ".lora_A." in name or ".lora_B." in name:
            continue
        t = tensor if tensor is None or dtype is None or not tensor.is_floating_point() else tensor.to(dtype)
        yield name.removeprefix(_PREFIX).replace(".base_layer.", "."), t


def export_part(engine: Any, part: str, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor | None]]:
    """The named tensors of one export ``part`` of a PEFT engine (collective; ``None`` off rank 0):
    ``policy`` (merged, HF names), ``base`` (HF names, adapters left out) or ``adapter`` (PEFT names, the
    adapter matrices in fp32, as ``adapter/`` holds them)."""
    if part == "policy":
        return hf_params(engine, dtype)
    if not is_peft(engine.module):
        raise ValueError(f"a {part!r} export needs LoRA adapters (train.lora.r > 0)")
    if part == "base":
        return base_stream(iter_full_params(engine, None), dtype)
    if part == "adapter":
        return iter(adapter_state(engine).items())
    raise ValueError(f"unknown export part {part!r}; expected policy, base or adapter")


def adapter_state(engine: Any) -> dict[str, torch.Tensor]:
    """The adapter weights, PEFT-named as ``save_pretrained`` writes them, on rank 0 ({} elsewhere or
    without adapters). Collective under ZeRO-3 (every rank walks every parameter)."""
    if not is_peft(engine.module):
        return {}
    from peft.utils import get_peft_model_state_dict

    full = {name: t for name, t in iter_full_params(engine, None) if "lora_" in name and t is not None}
    return get_peft_model_state_dict(engine.module, state_dict=full) if full else {}


def write_adapter(out_dir: Path, module: Any, state: dict[str, torch.Tensor], base: str | None) -> None:
    """A PEFT adapter directory (``adapter_config.json``, ``adapter_model.safetensors``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_cfg = module.peft_config["default"]
    saved_base = peft_cfg.base_model_name_or_path
    peft_cfg.base_model_name_or_path = base
    try:
        peft_cfg.save_pretrained(str(out_dir))
    finally:
        peft_cfg.base_model_name_or_path = saved_base
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / "adapter_model.safetensors"),
              metadata={"format": "pt"})


@contextmanager
def adapters_disabled(engine: Any):
    """The engine's forward runs the base alone inside this context (a no-op without adapters)."""
    module = engine.module
    with (module.disable_adapter() if is_peft(module) else nullcontext()):
        yield


def same_dir(a: str | Path | None, b: str | Path | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()
