"""TDPO: DPO with token-level (sequential) KL control.

Token-level Direct Preference Optimization (Zeng et al. 2024, arXiv:2404.11999). Besides the usual
log-ratios it needs, per completion, the sequential KL divergence

    ``D_SeqKL(x, y; π_ref ‖ π) = Σ_t KL(π_ref(·|x, y<t) ‖ π(·|x, y<t))``

(summed over the completion's tokens), which :func:`selfplay.losses.logprobs.token_kl` computes per token
from the two models' logits without a second full-vocabulary copy. This module is the loss on those
per-sequence sums; it never sees logits.

Choices: the logged rewards follow the authors' code, ``β·(Δ + D_SeqKL)`` per completion (the implicit
reward plus the KL term that TDPO adds to it).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

TDPO_PARAMS: dict[str, object] = {"alpha": 0.5, "variant": 2}
"""The extra parameters of :func:`tdpo_loss` and their defaults (for the config schema)."""


def tdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_seq_kl: Tensor,
    rejected_seq_kl: Tensor,
    *,
    beta: float,
    alpha: float = 0.5,
    variant: int = 2,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair TDPO1 or TDPO2 loss.

    Args:
        policy_*_logps, ref_*_logps: ``[B]`` log-probs summed over completion tokens.
        chosen_seq_kl, rejected_seq_kl: ``[B]`` sequential KL ``D_SeqKL(x, y; π_ref ‖ π)`` of each completion
            (sum over its tokens of the per-token ``KL(π_ref ‖ π)``); gradients flow through them.
        beta: β > 0. alpha: α, TDPO2's weight on the KL difference (paper default 0.5). variant: 1 or 2.

    With ``u = β·(Δ_w − Δ_l)`` (``Δ = log π − log π_ref``):

    * TDPO1: ``δ = β·(D_SeqKL(y_l) − D_SeqKL(y_w))``, ``loss = −log σ(u − δ)``
    * TDPO2: ``δ₂ = β·D_SeqKL(y_l) − sg(β·D_SeqKL(y_w))``, ``loss = −log σ(u − α·δ₂)``
      (``sg`` = stop-gradient: the chosen KL is not pushed down, which the paper found more stable).

    Returns:
        ``(losses[B], chosen_rewards[B], rejected_rewards[B])``, rewards ``β·(Δ + D_SeqKL)`` detached.
    """
    if variant not in (1, 2):
        raise ValueError(f"tdpo variant must be 1 or 2, got {variant!r}")
    if not (isinstance(beta, int | float) and beta > 0):
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    tensors = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
        "chosen_seq_kl": chosen_seq_kl,
        "rejected_seq_kl": rejected_seq_kl,
    }
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1 or policy_chosen_logps.dim() != 1:
        raise ValueError(f"all tdpo inputs must be 1-D of the same shape [B]; got {shapes}")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    u = chosen_logratios - rejected_logratios
    if variant == 1:
        logits = u - (rejected_seq_kl - chosen_seq_kl)
    else:
        logits = u - alpha * (rejected_seq_kl - chosen_seq_kl.detach())
    losses = -F.logsigmoid(beta * logits)
    chosen_rewards = beta * (chosen_logratios + chosen_seq_kl).detach()
    rejected_rewards = beta * (rejected_logratios + rejected_seq_kl).detach()
    return losses, chosen_rewards, rejected_rewards
