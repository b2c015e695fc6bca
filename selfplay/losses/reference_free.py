"""Preference losses that need no reference model: SimPO, ORPO, SLiC.

They read only the policy's summed log-probs (and, for SimPO and ORPO, the completion lengths), so a
recipe using them skips the reference forward pass entirely; ``ref_*`` arguments are ignored and may be
``None``. Their rewards are the policy's own implicit reward scaled by β: ``β·(log π / |y|)`` for the
length-normalised SimPO and ORPO (as TRL's CPO/ORPO trainers log), ``β·log π`` for SLiC.

Choices:

* SimPO uses the paper's Eq. 6 convention, ``γ`` is the target reward margin *in reward units*:
  ``−log σ(β·Δavg − γ)``. The authors' code and TRL's CPO trainer take ``gamma_beta_ratio = γ/β`` or
  divide by β themselves; it is the same loss. Pass ``gamma``, not the ratio.
* ORPO's NLL term is computed per sequence from the summed log-prob and the length: ``−log π(y_w)/|y_w|``.
  (TRL's ORPO trainer averages over all chosen tokens of the batch instead; equal for equal lengths.)
  ORPO has no β in its loss; ``beta`` only scales the logged rewards, and ``lambda_`` weights the
  odds-ratio term (TRL's ORPO calls this weight ``beta``).
* SLiC has no β either: the calibration margin ``delta`` is on raw policy log-probs; ``beta`` only scales
  the logged rewards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfplay.losses.pair import LossOutput, PairLogps

_LOG_HALF = -math.log(2.0)
_MAX_AVG_LOGP = -1e-6  # keeps log(1 - e^a) finite when a completion has probability 1


def simpo(pair: PairLogps, beta: float, *, gamma: float = 0.5) -> LossOutput:
    """SimPO (Meng et al. 2024, arXiv:2405.14734, Eq. 6), reference-free and length-normalised:

    ``−log σ(β·(log π(y_w)/|y_w| − log π(y_l)/|y_l|) − γ)``, ``gamma`` = target reward margin γ in reward
    units (the paper's Eq. 6; default 0.5 as TRL's ``simpo_gamma``). The authors' ``gamma_beta_ratio`` is
    ``gamma / beta``.
    """
    chosen, rejected = pair.policy_chosen_avg, pair.policy_rejected_avg
    losses = -F.logsigmoid(beta * (chosen - rejected) - gamma)
    return losses, beta * chosen.detach(), beta * rejected.detach()


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 − eᵡ)`` for ``x < 0``, accurate on both sides of ``−log 2`` (Mächler 2012)."""
    return torch.where(x < _LOG_HALF, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(pair: PairLogps, beta: float, *, lambda_: float = 0.1) -> LossOutput:
    """ORPO (Hong et al. 2024, arXiv:2403.07691, Eqs. 2-7), with ``a = log π(y)/|y|`` (average log-prob):

    ``−a_w + λ·(−log σ(log odds(y_w) − log odds(y_l)))``, ``log odds(y) = a − log(1 − eᵃ)``.
    The first term is the length-normalised NLL of the chosen completion; ``lambda_`` is the paper's λ
    (default 0.1, as TRL's ORPO ``beta``). Inside the odds, ``a`` is clamped to ``-1e-6`` so that a
    completion of probability 1 gives a large finite log-odds instead of ``inf``.
    """
    a_w = pair.policy_chosen_avg.clamp(max=_MAX_AVG_LOGP)
    a_l = pair.policy_rejected_avg.clamp(max=_MAX_AVG_LOGP)
    log_odds = (a_w - a_l) - (log1mexp(a_w) - log1mexp(a_l))
    losses = -pair.policy_chosen_avg + lambda_ * -F.logsigmoid(log_odds)
    return losses, beta * pair.policy_chosen_avg.detach(), beta * pair.policy_rejected_avg.detach()


def slic(pair: PairLogps, beta: float, *, delta: float = 1.0, lambda_: float = 0.1) -> LossOutput:
    """SLiC-HF (Zhao et al. 2023, arXiv:2305.10425, Eq. 1), calibration loss plus NLL regulariser:

    ``max(0, δ − log π(y_w) + log π(y_l)) − λ·log π(y_w)`` on summed (not averaged) log-probs, the
    chosen completion serving as the regularisation target. ``delta`` = margin δ (default 1.0);
    ``lambda_`` = regularisation weight λ (default 0.1; tune it: the NLL grows with the length).
    """
    losses = torch.relu(delta - pair.policy_chosen + pair.policy_rejected) - lambda_ * pair.policy_chosen
    return losses, beta * pair.policy_chosen.detach(), beta * pair.policy_rejected.detach()
