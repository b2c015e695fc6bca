"""What leaves the learner: weight buckets for a sync, a Hugging Face directory, a resumable checkpoint.

* ``export_buckets``: full tensors under their Hugging Face names, packed with the project's wire format
  (:func:`selfplay.sync.buckets.pack_buckets`). Below ZeRO-3 the parameters are packed from their own
  memory; under ZeRO-3 one bucket's parameters are gathered together and packed from the gathered
  memory before it is released (no per-parameter gather and copy); a LoRA model's merged weights are
  gathered one parameter at a time.
* ``save_hf``: an ordinary HF directory (``config.json``, ``model.safetensors`` sharded above 5 GB,
  ``generation_config.json``, tokenizer files) that transformers and vLLM load with ``from_pretrained``.
  Written by rank 0 under a temporary sibling name and renamed into place, so a crash never leaves a
  directory that looks complete but is not.
* ``save_checkpoint``/``load_checkpoint``: DeepSpeed's own checkpoint (weights, optimizer shards, per rank)
  plus the learner's ``client_state`` (step, round position, scheduler) and each rank's RNG state (tensors
  only, read back with ``weights_only=True``). The run directory may be on storage others can write, so
  no file of it is unpickled with code: DeepSpeed's own files are checked with ``weights_only=True``
  before DeepSpeed loads them. Every
  save gets a new tag (``step00000012``, or ``step00000012.1`` when that step is saved again, e.g. by a
  round resumed exactly at its end); DeepSpeed's ``latest`` file is updated after the save completes,
  and older tags are removed only after that, so an interrupted save leaves the previous one usable.

All of these are collective: every rank calls them.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

from selfplay.atomic import replace_dir, write_text
from selfplay.sync.buckets import pack_bucket, pack_buckets, size_groups
from selfplay.train.lora import ADAPTER_DIR, adapter_state, export_part, hf_params, is_peft, write_adapter

TAG_PREFIX = "step"


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def export_buckets(engine: Any, bucket_mb: float, version: int, dtype: torch.dtype | None,
                   split: bool = False, part: str = "policy") -> list[Any]:
    """Safetensors buckets of the full weights on rank 0; ``[]`` on other ranks.

    Below ZeRO-3 the parameters are packed straight from their own memory (``copy=False``): packing is
    the one copy, and nothing steps the optimizer while this runs. With ``split=True`` they are not even
    packed: the buckets are split ones (:func:`~selfplay.sync.buckets.pack_bucket_parts`) whose parts view
    the parameters themselves, for a caller that hands them on at once (a learner actor's return value,
    which Ray copies into the object store: that copy is then the only one). ZeRO-3: see
    :func:`_zero3_buckets` (gathered memory is released bucket by bucket, so it is always packed).
    ``part``: ``policy`` (the weights, LoRA adapters merged in), or with LoRA ``base`` or ``adapter``
    (:func:`~selfplay.train.lora.export_part`)."""
    if part != "policy":
        named = export_part(engine, part, dtype)
        if _rank() != 0:
            for _ in named:
                pass
            return []
        return list(pack_buckets(named, bucket_mb=bucket_mb, version=version, split=split))
    if engine.zero_optimization_stage() == 3 and not is_peft(engine.module):
        return _zero3_buckets(engine, bucket_mb, version, dtype)
    params = hf_params(engine, dtype, copy=False)  # LoRA adapters merged in
    if _rank() != 0:
        for _ in params:
            pass
        return []
    return list(pack_buckets(params, bucket_mb=bucket_mb, version=version, split=split))


def _zero3_buckets(engine: Any, bucket_mb: float, version: int, dtype: torch.dtype | None) -> list[bytes]:
    """ZeRO-3 buckets: the parameters grouped as :func:`~selfplay.sync.buckets.pack_buckets` groups
    tensors (by their full sizes), each group gathered in one ``GatheredParameters`` (collective, the same
    groups on every rank) and packed on rank 0 from the gathered memory while it is held; persistent
    buffers (whole on every rank) go in the same stream."""
    import deepspeed

    module = engine.module
    persistent = set(module.state_dict().keys())
    items = [(n, p, True) for n, p in module.named_parameters()]
    items += [(n, b, False) for n, b in module.named_buffers() if n in persistent]

    def nbytes(item: tuple[str, torch.Tensor, bool]) -> int:  # the full size, not the local shard's
        _, t, is_param = item
        numel = t.ds_numel if is_param and hasattr(t, "ds_numel") else t.numel()
        return numel * (dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size())

    keep = _rank() == 0
    blobs: list[bytes] = []
    for group in size_groups(items, nbytes, bucket_mb):
        with deepspeed.zero.GatheredParameters([t for _, t, is_param in group if is_param], modifier_rank=None):
            if keep:
                blobs.append(pack_bucket({n: _packable(t, dtype) for n, t, _ in group}, version, len(blobs)))
    return blobs


def _packable(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``t`` as a contiguous CPU tensor in ``dtype``, without a copy when it already is one."""
    t = t.detach()
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.cpu().contiguous()


def save_hf(engine: Any, tokenizer: Any, out_dir: str | Path, dtype: torch.dtype, adapter_base: str | None = None
            ) -> Path | None:
    """Write the current weights as a Hugging Face directory; returns the path on rank 0.

    A LoRA learner's weights are written merged, and its adapter as a PEFT directory ``adapter/`` inside
    (whose config names ``adapter_base`` as the base model).
    """
    from huggingface_hub import save_torch_state_dict

    out_dir = Path(out_dir)
    state = dict(hf_params(engine, dtype))
    adapter = adapter_state(engine)
    if _rank() != 0:
        _barrier()
        return None
    module = engine.module

    def build(tmp: Path) -> None:
        config = copy.deepcopy(module.config)
        config.dtype = str(dtype).removeprefix("torch.")
        config.use_cache = True  # the learner turns the KV cache off for training; inference wants it
        config.save_pretrained(tmp)
        if getattr(module, "generation_config", None) is not None:
            module.generation_config.save_pretrained(tmp)
        save_torch_state_dict(state, tmp, max_shard_size="5GB", metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        if adapter:
            write_adapter(tmp / ADAPTER_DIR, module, adapter, adapter_base)

    try:
        _refuse_nonfinite(state, out_dir)  # NaN/inf weights are never committed as a policy
        replace_dir(out_dir, build)
    finally:
        _barrier()
    return out_dir


class NonFiniteWeightsError(ValueError):
    """The weights to export hold NaN or inf; nothing was written."""


def _refuse_nonfinite(state: dict[str, torch.Tensor], out_dir: Path) -> None:
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteWeightsError(
            f"the trained weights hold NaN/inf in {len(bad)} of {len(state)} tensors ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); {out_dir} was not written. Lower train.learning_rate or "
            "check train_metrics.jsonl for the step where the loss diverged")


def save_checkpoint(engine: Any, ckpt_dir: str | Path, global_step: int, client_state: dict[str, Any],
                    reference: torch.nn.Module | None = None) -> Path:
    """DeepSpeed checkpoint under a new tag, plus RNG (per rank) and a frozen reference (TDPO, rank 0)."""
    ckpt_dir = Path(ckpt_dir)
    tag = base = f"{TAG_PREFIX}{global_step:08d}"
    n = 0
    while (ckpt_dir / tag).exists():  # the same step saved again (a round resumed at its end): beside it
        n += 1
        tag = f"{base}.{n}"
    _barrier()  # every rank picked its tag before any rank writes one
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    save_rng(ckpt_dir / tag / f"rng_rank{_rank()}.pt")
    if reference is not None and _rank() == 0:
        state = {k: v.detach().cpu().contiguous() for k, v in reference.state_dict().items()}
        save_file(state, str(ckpt_dir / tag / "reference.safetensors"))
    _barrier()
    if _rank() == 0:
        write_text(ckpt_dir / "latest", tag)  # atomically: the new checkpoint becomes the one to resume from
        for old in ckpt_dir.glob(f"{TAG_PREFIX}*"):
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return ckpt_dir / tag


def save_rng(path: Path) -> None:
    """This rank's RNG state, as plain tensors (torch's CPU state and one per CUDA device)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    torch.save({"torch": torch.get_rng_state(), "cuda": list(cuda)}, path)


def load_rng(path: Path) -> None:
    """Restore what :func:`save_rng` wrote. ``weights_only=True``: the file is on shared storage that others
    may write, so it is read as tensors only; a pickle of anything else is refused, never run."""
    try:
        rng = torch.load(path, weights_only=True)
        state, cuda = rng["torch"], rng["cuda"]
        if not isinstance(state, torch.Tensor) or not all(isinstance(t, torch.Tensor) for t in cuda):
            raise TypeError("expected tensors under 'torch' and 'cuda'")
    except Exception as exc:
        raise ValueError(f"{path} is not an RNG state written by selfplay ({type(exc).__name__}: {exc})") from None
    torch.set_rng_state(state)
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# Plain-data classes DeepSpeed pickles into its ZeRO optimizer files; unpickling them runs no code of theirs.
_DEEPSPEED_DATA_CLASSES = (
    "deepspeed.runtime.zero.config:ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler:LossScaler",
    "deepspeed.runtime.fp16.loss_scaler:DynamicLossScaler",
    "deepspeed.utils.tensor_fragment:fragment_address",
)


def _deepspeed_data_classes() -> list[Any]:
    found = []
    for name in _DEEPSPEED_DATA_CLASSES:
        module, _, attr = name.partition(":")
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), attr))
    return found


def check_tensor_files(tag_dir: Path) -> None:
    """Refuse a checkpoint any of whose ``*.pt`` files holds more than tensors, plain data and DeepSpeed's
    own plain-data classes.

    DeepSpeed unpickles its checkpoint files in full (any object); each is opened here first with
    ``weights_only=True`` (memory-mapped, so nothing is read twice in full), which runs no code and fails
    on anything a pickle could use to run some.
    """
    allowed = _deepspeed_data_classes()
    for path in sorted(Path(tag_dir).glob("*.pt")):
        try:
            with safe_globals(allowed):
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            why = f"{type(exc).__name__}: {str(exc)[:300]}"
            with contextlib.suppress(Exception):  # name what it refers to, where torch can say
                why = f"it refers to {', '.join(get_unsafe_globals_in_checkpoint(path))}"
            raise ValueError(f"{path} holds more than tensors and plain data, so it is not loaded ({why})") from None


def load_checkpoint(engine: Any, ckpt_dir: str | Path) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from the latest tag; returns the saved ``client_state``.

    ``client_state["reference_file"]`` names the saved frozen reference (TDPO), when there is one.
    """
    ckpt_dir = Path(ckpt_dir)
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"no learner checkpoint in {ckpt_dir} (the 'latest' file is missing)")
    tag = latest.read_text().strip()
    check_tensor_files(ckpt_dir / tag)
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
    if path is None:
        raise FileNotFoundError(f"learner checkpoint {ckpt_dir / tag} could not be loaded")
    rng_file = ckpt_dir / tag / f"rng_rank{_rank()}.pt"
    if rng_file.is_file():
        load_rng(rng_file)
    ref_file = ckpt_dir / tag / "reference.safetensors"
    client_state = dict(client_state or {})
    client_state["reference_file"] = str(ref_file) if ref_file.is_file() else None
    client_state["tag"] = tag
    return client_state
