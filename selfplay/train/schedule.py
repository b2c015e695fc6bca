"""Learning-rate schedule of a round: linear warm-up, then cosine, linear or constant decay.

Expressed as the multiplier function of a ``torch.optim.lr_scheduler.LambdaLR`` (peak lr = the optimizer's
lr). Cosine and linear decay to 0 at the last step, as TRL/transformers do; warm-up starts at ``1/(w+1)``
of the peak rather than at 0, so the first optimizer step already moves the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_lambda(kind: str, total_steps: int, warmup_ratio: float, warmup_steps: int | None = None
              ) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimizer step ``s`` (0-based) of a ``total_steps`` round.
    ``warmup_steps``, when given, is the warm-up length in steps and replaces ``warmup_ratio``."""
    if kind not in ("cosine", "linear", "constant"):
        raise ValueError(f"lr_schedule must be cosine, linear or constant, got {kind!r}")
    total = max(1, total_steps)
    if warmup_steps is not None:
        warmup = min(total - 1, warmup_steps)
    else:
        warmup = min(total - 1, math.ceil(warmup_ratio * total)) if warmup_ratio > 0 else 0

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn
