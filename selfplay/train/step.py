"""One optimizer step of a learner rank: its micro-batches, the reduced statistics, the numerical guard.

Loss scaling: a micro-batch's *summed* loss is multiplied by ``W / denominator`` (the denominator is the
step's example count over all ranks and micro-batches, SFT: its completion tokens), because DeepSpeed
averages gradients over the W ranks and is told not to divide by the accumulation count. The gradient is
then exactly the mean over the step, however it is split into ranks x accumulation.

Numerical guard: a rank that sees a non-finite loss multiplies it by NaN before backward, so every
rank's reduced gradient is NaN and no rank applies the step (DeepSpeed's overflow check skips it under
ZeRO 1-3 and bf16; for plain fp32 ZeRO-0 we check the gradient norm ourselves before stepping). All
ranks then raise :class:`NonFiniteError` together, from the all-reduced statistics, so none is left
waiting in a collective. The weights stay the last good ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from selfplay.train.batches import Micro, Step
from selfplay.train.data import Encoded
from selfplay.train.objective import STAT_KEYS


class NonFiniteError(FloatingPointError):
    """The loss or gradient norm of an optimizer step was NaN/inf; the step was not applied."""


def optimizer_step(engine: Any, optimizer: torch.optim.Optimizer, objective: Callable, data: Encoded,
                   micros: tuple[Micro, ...], denominator: float, world_size: int, device: torch.device,
                   where: str, prepare: Callable[[tuple[Micro, ...]], None] | None = None
                   ) -> tuple[dict[str, float], float, float]:
    """Forward/backward this rank's ``micros`` and take the step; returns (summed stats, lr, grad norm).

    ``prepare(micros)``, if given, runs first on every rank (collective): KTO estimates its step-wide
    reference point there.
    """
    if prepare is not None:
        prepare(micros)
    totals = torch.zeros(len(STAT_KEYS), dtype=torch.float64)
    scale = world_size / max(denominator, 1)
    for j, micro in enumerate(micros):
        engine.set_gradient_accumulation_boundary(j == len(micros) - 1)
        loss_sum, stats = objective(data, micro)
        if stats["nonfinite"] > 0:  # poison the gradients: the optimizer step will be skipped everywhere
            loss_sum = loss_sum * float("nan")
        engine.backward(loss_sum * scale, scale_wrt_gas=False)
        totals += torch.stack([stats[k].detach().cpu() for k in STAT_KEYS])
    if torch.distributed.is_initialized() and world_size > 1:
        totals = totals.to(device)  # NCCL reduces device tensors only
        torch.distributed.all_reduce(totals)
        totals = totals.cpu()
    stats = dict(zip(STAT_KEYS, totals.tolist()))
    own_norm = None
    if engine.optimizer is optimizer:  # plain fp32 ZeRO-0: DeepSpeed applies any gradient, so check here
        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
        own_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        if not math.isfinite(own_norm) or stats["nonfinite"] > 0:
            engine.zero_grad()
            raise NonFiniteError(f"non-finite loss or gradient norm ({own_norm}) at {where}; step not applied")
    skipped = engine.skipped_steps
    lr = optimizer.param_groups[0]["lr"]
    engine.step()
    if engine.skipped_steps != skipped or stats["nonfinite"] > 0:
        raise NonFiniteError(f"non-finite loss or gradient norm at {where}; step not applied")
    norm = engine.get_global_grad_norm() if own_norm is None else own_norm
    return stats, lr, float(norm) if norm is not None else float("nan")


def step_rows(data: Encoded, step: Step, limit: int = 16) -> list[int | str]:
    """Input-table row indices of the real examples of a step (to name a bad batch)."""
    rows = sorted({int(data.rows[i]) for m in step.micros for i, r in zip(m.indices, m.real) if r})
    return [*rows[:limit], *(["..."] if len(rows) > limit else [])]
