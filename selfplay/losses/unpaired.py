"""KTO: a preference loss on unpaired completions, each labelled desirable or undesirable.

Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 7-8). Each completion is
scored against a reference point ``z₀``, an estimate of ``KL(π ‖ π_ref)`` for the prompt. As in the
paper (and TRL), ``z₀`` is estimated from *mismatched* pairs: each prompt with another example's
completion, so ``z₀`` carries no information about the completion being scored; it is the batch mean
of the policy−reference log-ratio over those pairs, clamped at 0 and detached (no gradient through it).

Choices: the losses keep the input order (TRL reorders them desirable-first). The mean is taken before
the clamp. By default it is over the rows given; a trainer that splits a batch into micro-batches and
ranks passes ``kl_mean``, the mean over the whole optimizer step (as TRL and the authors' code do; a
per-micro-batch clamp of one sample is biased upward), and then needs no mismatched rows here.
"""

from __future__ import annotations

import torch
from torch import Tensor

KTO_PARAMS: dict[str, object] = {"desirable_weight": 1.0, "undesirable_weight": 1.0}
"""The extra parameters of :func:`kto_loss` and their defaults (for the config schema)."""


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    kl_policy_logps: Tensor | None,
    kl_ref_logps: Tensor | None,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl_mean: float | Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example KTO loss.

    Args:
        policy_logps, ref_logps: ``[N]`` summed completion log-probs of the N (prompt, completion) examples.
        labels: ``[N]`` bool, True where the completion is desirable.
        kl_policy_logps, kl_ref_logps: ``[M]`` summed log-probs of mismatched (prompt, other completion)
            pairs under the policy and the reference (usually M = N, completions shifted by one).
        beta: β > 0; desirable_weight, undesirable_weight: λ_D, λ_U ≥ 0 (the paper balances
            ``λ_D·n_D / (λ_U·n_U)`` to lie in [1, 4/3]).
        kl_mean: the mean mismatched log-ratio computed by the caller over a larger batch (unclamped);
            when given, ``kl_policy_logps``/``kl_ref_logps`` are ignored and may be ``None``.

    Returns:
        ``(losses[N], rewards[N], kl[])`` where with ``r = log π(y|x) − log π_ref(y|x)``,
        ``z₀ = max(0, mean(kl_policy_logps − kl_ref_logps))`` (detached) and

        * desirable: ``loss = λ_D·(1 − σ(β·(r − z₀)))``
        * undesirable: ``loss = λ_U·(1 − σ(β·(z₀ − r)))``

        ``rewards = β·r`` (detached) and ``kl = z₀``.
    """
    _check_inputs(policy_logps, ref_logps, labels, kl_policy_logps, kl_ref_logps, beta, desirable_weight,
                  undesirable_weight, kl_mean)
    dtype = torch.promote_types(policy_logps.dtype, torch.float32)
    logratios = policy_logps.to(dtype) - ref_logps.to(dtype)
    if kl_mean is None:
        kl_mean = (kl_policy_logps.to(dtype) - kl_ref_logps.to(dtype)).mean()  # type: ignore[union-attr]
    kl = torch.as_tensor(kl_mean, dtype=dtype, device=logratios.device).clamp(min=0).detach()
    desirable = desirable_weight * (1.0 - torch.sigmoid(beta * (logratios - kl)))
    undesirable = undesirable_weight * (1.0 - torch.sigmoid(beta * (kl - logratios)))
    losses = torch.where(labels, desirable, undesirable)
    return losses, beta * logratios.detach(), kl


def _check_inputs(policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, kl_policy_logps: Tensor | None,
                  kl_ref_logps: Tensor | None, beta: float, desirable_weight: float, undesirable_weight: float,
                  kl_mean: float | Tensor | None) -> None:
    """Refuse arguments :func:`kto_loss` cannot use, naming the argument and its shape or value."""
    if not (isinstance(beta, int | float) and beta > 0):
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError("desirable_weight and undesirable_weight must be >= 0")
    for name, t in {"policy_logps": policy_logps, "ref_logps": ref_logps, "labels": labels}.items():
        if t.dim() != 1 or t.shape != policy_logps.shape:
            raise ValueError(
                f"{name} must be 1-D [N] like policy_logps {tuple(policy_logps.shape)}, got {tuple(t.shape)}"
            )
    if kl_mean is None and (kl_policy_logps is None or kl_ref_logps is None or kl_policy_logps.dim() != 1
                            or kl_policy_logps.shape != kl_ref_logps.shape or kl_policy_logps.numel() == 0):
        shapes = [None if t is None else tuple(t.shape) for t in (kl_policy_logps, kl_ref_logps)]
        raise ValueError(
            "kl_policy_logps and kl_ref_logps must be non-empty 1-D [M] of equal shape, got "
            f"{shapes[0]} and {shapes[1]} (or pass kl_mean)"
        )
    if labels.dtype != torch.bool:
        raise ValueError(f"labels must be a bool tensor (True = desirable), got {labels.dtype}")
