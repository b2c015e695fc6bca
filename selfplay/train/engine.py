"""DeepSpeed plumbing for one learner rank: the process group, the engine config, and full-weight access.

Imports DeepSpeed lazily (inside functions): ``import selfplay.train`` must not pull it in. Choices:

* **Rendezvous**: ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` are set from the
  arguments; a single rank with no address given picks ``127.0.0.1`` and a free port itself, so a test or
  a one-GPU machine needs no launcher and no Ray. Backend: NCCL with CUDA, gloo otherwise. With a
  loopback ``MASTER_ADDR`` (a local run) rank 0 hosts the store on a socket bound to that address:
  torch's ``TCPStore`` would otherwise listen on every interface, whatever the address says.
* **Optimizer**: a plain torch optimizer (``train.optimizer``: AdamW, RMSprop as SPIN, SPPO and the DPO
  authors use, or SGD) is handed to DeepSpeed as the client optimizer, so no fused/CPU Adam extension is
  compiled; ``zero_force_ds_cpu_optimizer: false`` lets it run with offload. RMSprop keeps one state
  tensor per weight instead of AdamW's two.
* **No extension is compiled on CPU.** DeepSpeed's CPU backend JIT-builds a shared-memory op
  (``deepspeed_shm_comm``) at ``init_distributed``, used only by its inference all-reduce; training
  collectives go through the gloo group either way. The build is turned off: it makes the first start-up
  wait for a compiler, its lock file outlives a process killed mid-build and then every later learner
  waits on it forever (seen: a run killed during start-up hung every run after it on that machine), and
  its kernels need AVX2/AVX-512 that another CPU may lack.
* **Gradient accumulation** is driven by the learner (``set_gradient_accumulation_boundary``), and losses
  are pre-normalised by the learner (``backward(..., scale_wrt_gas=False)``); DeepSpeed's
  ``gradient_accumulation_steps`` is only bookkeeping.
* **Full weights** are read one parameter at a time (``GatheredParameters`` under ZeRO-3: collective), so
  exporting never needs two full copies of the model.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch

_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
_saved_env: dict[str, str | None] | None = None
_store_listener: socket.socket | None = None  # rank 0's loopback store socket until the TCPStore owns it


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def device_for(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(rank: int, world_size: int, master_addr: str | None, master_port: int | None,
                     local_rank: int = 0, timeout_s: float = 1800.0) -> None:
    """Join (or, for a single rank, create) the process group of this learner world."""
    import deepspeed

    global _saved_env
    if _saved_env is None:  # restored by destroy_distributed, so the process looks as before
        _saved_env = {key: os.environ.get(key) for key in _DIST_ENV}
    if master_addr is None or master_port is None:
        if world_size > 1:
            raise ValueError("a learner world of more than one rank needs master_addr and master_port")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    else:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = master_addr, str(master_port)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # see the module docstring
    if _is_loopback(os.environ["MASTER_ADDR"]) and not torch.distributed.is_initialized():
        _loopback_group(backend, rank, world_size, timedelta(seconds=timeout_s))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                               timeout=timedelta(seconds=timeout_s), rank=rank, world_size=world_size)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _loopback_group(backend: str, rank: int, world_size: int, timeout: timedelta) -> None:
    """The process group with its store on loopback; DeepSpeed then adopts the initialised group."""
    global _store_listener
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    fd = None
    if rank == 0:
        host = "127.0.0.1" if addr == "localhost" else addr
        _store_listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        _store_listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _store_listener.bind((host, port))
        _store_listener.listen(128)
        fd = _store_listener.fileno()
    store = torch.distributed.TCPStore(addr, port, world_size, rank == 0, timeout=timeout, master_listen_fd=fd)
    if _store_listener is not None:
        # The store owns the descriptor now and closes it itself: closing it here too could close whatever
        # file later reuses the number (seen: EBADF at shutdown, then a dead rank in the next group).
        _store_listener.detach()
        _store_listener = None
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def destroy_distributed() -> None:
    """Leave the process group and restore the rendezvous environment variables set by init."""
    import deepspeed.comm as dist

    global _saved_env, _store_listener
    if torch.distributed.is_initialized():
        dist.destroy_process_group()
    if _store_listener is not None:
        _store_listener.close()
        _store_listener = None
    for key, value in (_saved_env or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _saved_env = None


def ds_config(cfg: Any, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for a ``TrainConfig``."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if cfg.zero_stage == 3:
        # Small tensors (norms) stay replicated; gathers are per layer.
        zero.update(stage3_param_persistence_threshold=10_000, stage3_prefetch_bucket_size=5e7,
                    stage3_gather_16bit_weights_on_model_save=False)
    if cfg.optimizer_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.max_grad_norm,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "dump_state": False,
    }


OPTIMIZERS = ("adamw", "rmsprop", "sgd")


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, name: str = "adamw"
                    ) -> torch.optim.Optimizer:
    """``name`` (adamw | rmsprop | sgd) with no decay on 1-D parameters (norms, biases), as is standard
    for transformers. RMSprop and SGD take torch's defaults (RMSprop: alpha 0.99, eps 1e-8, no momentum),
    which is what ``getattr(torch.optim, "RMSprop")(params, lr=lr)`` and HF ``optim: rmsprop`` give."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay, "decay": True},
              {"params": no_decay, "weight_decay": 0.0, "decay": False}]
    groups = [g for g in groups if g["params"]]
    fused = fused_ok([*decay, *no_decay])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, **fused)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.99, eps=1e-8, foreach=False)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, **fused)
    raise ValueError(f"train.optimizer: unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def fused_ok(params: list[torch.Tensor]) -> dict[str, bool]:
    """``fused=True`` where torch has a fused kernel for every parameter (floating point, on CPU or CUDA),
    else the per-tensor loop, which is slower (``foreach`` slower still); the optimizer step's share of a
    training step shows in ``python -m bench.learner``."""
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if ok else {"foreach": False}


def build_engine(model: torch.nn.Module, cfg: Any, world_size: int) -> tuple[Any, torch.optim.Optimizer]:
    import deepspeed

    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay, getattr(cfg, "optimizer", "adamw"))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(cfg, world_size))
    if world_size == 1 and int(cfg.zero_stage) == 0:
        # Alone, DeepSpeed still flattens every gradient into buckets and all-reduces them over gloo: an
        # identity that costs time every step (``python -m bench.learner`` measures the step).
        engine.enable_backward_allreduce = False
    return engine, optimizer


def iter_full_params(engine: Any, dtype: torch.dtype | None = None, to_all: bool = False, copy: bool = True
                     ) -> Iterator[tuple[str, torch.Tensor | None]]:
    """``(hf_name, full_tensor)`` for every parameter and persistent buffer; collective under ZeRO-3.

    Every rank must exhaust the iterator. Tensors are CPU copies on rank 0 (on every rank with
    ``to_all``); other ranks get ``None``. ``copy=False`` yields the live parameters themselves (detached;
    cast when ``dtype`` differs) wherever they are whole, i.e. below ZeRO-3, for a caller that copies
    them before the next optimizer step (packing a sync bucket); a ZeRO-3 gather is always copied,
    because the gathered memory is released when the next parameter is gathered.
    """
    import deepspeed

    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    keep = to_all or rank == 0
    module = engine.module
    zero3 = engine.zero_optimization_stage() == 3
    for name, param in module.named_parameters():
        if zero3:
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                tensor = _copy(param, dtype) if keep else None
        else:
            tensor = (_copy(param, dtype) if copy else _cast(param, dtype)) if keep else None
        yield name, tensor
    persistent = set(module.state_dict().keys())
    for name, buf in module.named_buffers():
        if name in persistent:
            yield name, (_copy(buf, dtype) if keep else None)


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``t`` detached, in ``dtype`` (no copy when it already is: the parameter's own memory)."""
    t = t.detach()
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def _copy(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach()
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.to("cpu", copy=True).contiguous()


def model_from_state(config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                     what: str = "weights") -> torch.nn.Module:
    """A plain HF model in ``dtype`` holding the full HF-named ``state`` (a frozen reference copy, or a
    LoRA policy merged into its new base). Every weight is overwritten, so the random init is skipped;
    ``what`` names the state in the error raised when it does not fit the model."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.to(dtype).load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"{what} do not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def compute_dtype(cfg: Any) -> torch.dtype:
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float32
