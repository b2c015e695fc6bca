"""Preference losses that score each completion's own log-ratio, not only the pair's margin.

Same notation as :mod:`selfplay.losses.pairwise`: ``Δ_w``, ``Δ_l`` are the summed policy−reference
log-ratios of the chosen and rejected completions, ``[B]``; rewards are ``β·Δ_w``, ``β·Δ_l`` (detached).
Because these losses anchor each completion separately, they can move both likelihoods in the same
direction (``apo_down`` lowers both), which a margin-only loss cannot express.

All names here are TRL 1.16 ``DPOTrainer`` loss types and equal TRL's values. One choice beyond TRL:
``bco_pair`` takes the reward shift ``delta`` as an explicit argument (default 0, which is exactly TRL
1.16). The BCO paper, and TRL before 1.0, subtract a running mean of the rewards there; that mean is
training state, so a trainer that wants it keeps it and passes it in per batch (``BATCH_PARAMS``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfplay.losses.pair import LossOutput, PairLogps


def nca_pair(pair: PairLogps, beta: float) -> LossOutput:
    """NCA for pairs (Chen et al. 2024, "Noise Contrastive Alignment", arXiv:2402.05369), ``r = β·Δ``:

    ``−log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l)``.
    """
    r_w, r_l = beta * pair.chosen_logratios, beta * pair.rejected_logratios
    losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    return losses, *pair.dpo_rewards(beta)


def bco_pair(pair: PairLogps, beta: float, *, delta: Tensor | float = 0.0) -> LossOutput:
    """Binary Classifier Optimization for pairs (Jung et al. 2024, arXiv:2404.04656):

    ``−log σ(β·Δ_w − δ) − log σ(−(β·Δ_l − δ))``: chosen classified as good, rejected as bad, around the
    reward shift δ. ``delta = 0`` is TRL 1.16. For the paper's version pass the running mean of the
    rewards ``β·Δ`` (both chosen and rejected) over training so far (a float or a 0-d tensor).
    """
    r_w, r_l = beta * pair.chosen_logratios, beta * pair.rejected_logratios
    return -F.logsigmoid(r_w - delta) - F.logsigmoid(-(r_l - delta)), *pair.dpo_rewards(beta)


def sppo_hard(pair: PairLogps, beta: float) -> LossOutput:
    """SPPO with hard win probabilities (Wu et al. 2024, arXiv:2405.00675, Eq. 4.7 with P ∈ {0, 1}):

    ``(Δ_w − 1/(2β))² + (Δ_l + 1/(2β))²``: regress the chosen log-ratio to ``+1/(2β)`` and the rejected
    to ``−1/(2β)``. The soft version with the judge's win probabilities is ``sppo``.
    """
    half = 0.5 / beta
    losses = (pair.chosen_logratios - half) ** 2 + (pair.rejected_logratios + half) ** 2
    return losses, *pair.dpo_rewards(beta)


def sppo(pair: PairLogps, beta: float, *, chosen_probs: Tensor | float | None = None,
         rejected_probs: Tensor | float | None = None) -> LossOutput:
    """SPPO (Wu et al. 2024, arXiv:2405.00675, Eq. 4.7) with the judge's win probabilities:

    ``½·[(Δ_w − (P_w − ½)/β)² + (Δ_l − (P_l − ½)/β)²]``, where ``P_w``, ``P_l`` ∈ [0, 1], ``[B]``, are the
    estimated probabilities that the chosen and the rejected sample beat the policy (their win rates
    against the prompt's other samples). Each log-ratio regresses to its own target, so a rejected sample
    that still wins half its comparisons is left alone. The ½ is uclaml/SPPO's ``sppo`` loss.
    """
    if chosen_probs is None or rejected_probs is None:
        raise ValueError("sppo needs chosen_probs and rejected_probs (the judge's win probabilities per pair)")
    p_w = torch.as_tensor(chosen_probs, dtype=pair.chosen_logratios.dtype, device=pair.chosen_logratios.device)
    p_l = torch.as_tensor(rejected_probs, dtype=pair.chosen_logratios.dtype, device=pair.chosen_logratios.device)
    if bool(((p_w < 0) | (p_w > 1) | (p_l < 0) | (p_l > 1) | ~torch.isfinite(p_w) | ~torch.isfinite(p_l)).any()):
        raise ValueError("sppo: chosen_probs/rejected_probs must be win probabilities in [0, 1] (a judge that "
                         "compares: pairwise or llm_judge)")
    losses = 0.5 * ((pair.chosen_logratios - (p_w - 0.5) / beta) ** 2
                    + (pair.rejected_logratios - (p_l - 0.5) / beta) ** 2)
    return losses, *pair.dpo_rewards(beta)


def apo_zero(pair: PairLogps, beta: float) -> LossOutput:
    """Anchored Preference Optimization, APO-zero (D'Oosterlinck et al. 2024, arXiv:2408.06266, Eq. 7):

    ``(1 − σ(β·Δ_w)) + σ(β·Δ_l)``: raise the chosen and lower the rejected likelihood; for data whose
    chosen completions are better than the model's own outputs.
    """
    losses = (1.0 - torch.sigmoid(beta * pair.chosen_logratios)) + torch.sigmoid(beta * pair.rejected_logratios)
    return losses, *pair.dpo_rewards(beta)


def apo_down(pair: PairLogps, beta: float) -> LossOutput:
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8): ``σ(β·Δ_w) + (1 − σ(β·(Δ_w − Δ_l)))``.

    Lowers the chosen likelihood and the rejected one more; for data whose chosen completions are worse
    than the model's own outputs.
    """
    losses = torch.sigmoid(beta * pair.chosen_logratios) + (1.0 - torch.sigmoid(beta * pair.margin))
    return losses, *pair.dpo_rewards(beta)
