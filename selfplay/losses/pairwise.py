"""DPO-family losses that act on the implicit-reward margin of a pair.

Notation (all ``[B]``, log-probs summed over completion tokens):
``Δ_w = log π(y_w|x) − log π_ref(y_w|x)``, ``Δ_l`` likewise for the rejected completion, and the margin
``h = Δ_w − Δ_l``. ``σ`` is the logistic function. Every function returns
``(losses[B], chosen_rewards[B], rejected_rewards[B])`` with rewards ``β·Δ_w`` and ``β·Δ_l`` (detached),
which is what TRL 1.16 logs for every loss type, the length-normalised ones included.

Where a name is also a TRL 1.16 ``DPOTrainer`` loss type, the value equals TRL's for the same inputs and
parameters (``tests/losses/test_trl_equivalence.py`` checks it against TRL's own code). Two deliberate
differences, both outside TRL's defaults: ``sigmoid`` honours ``label_smoothing`` (cDPO; TRL 1.16 ignores
it for ``sigmoid``), and ``discopop`` evaluates ``σ(z/τ)·e^{−z}`` as ``exp(log σ(z/τ) − z)``, which is the
same number where TRL's form is finite and stays finite where TRL's gives ``inf·0 = NaN``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfplay.losses.pair import LossOutput, PairLogps


def _smoothed_logistic(z: Tensor, label_smoothing: float) -> Tensor:
    """``−(1−ε)·log σ(z) − ε·log σ(−z)``: the logistic loss against a label that is flipped with prob. ε."""
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def sigmoid(pair: PairLogps, beta: float, *, label_smoothing: float = 0.0) -> LossOutput:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290): ``−log σ(β·h)``.

    With ``label_smoothing = ε > 0`` this is conservative DPO (cDPO, Mitchell 2023):
    ``−(1−ε)·log σ(β·h) − ε·log σ(−β·h)``. TRL 1.16 ignores ``label_smoothing`` for ``sigmoid``; the
    values agree at its default ``ε = 0``.
    """
    return _smoothed_logistic(beta * pair.margin, label_smoothing), *pair.dpo_rewards(beta)


def robust(pair: PairLogps, beta: float, *, label_smoothing: float = 0.0) -> LossOutput:
    """Robust DPO, rDPO (Chowdhury et al. 2024, arXiv:2403.00409), unbiased under label flips of rate ε:

    ``[−(1−ε)·log σ(β·h) + ε·log σ(−β·h)] / (1 − 2ε)``, ``ε = label_smoothing ∈ [0, 0.5)``.
    """
    eps = label_smoothing
    z = beta * pair.margin
    losses = (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
    return losses, *pair.dpo_rewards(beta)


def hinge(pair: PairLogps, beta: float) -> LossOutput:
    """Hinge loss on the margin, as in SLiC / RSO (Zhao et al. 2023; Liu et al. 2023): ``max(0, 1 − β·h)``."""
    return torch.relu(1.0 - beta * pair.margin), *pair.dpo_rewards(beta)


def ipo(pair: PairLogps, beta: float) -> LossOutput:
    """IPO (Azar et al. 2023, arXiv:2310.12036, Eq. 17), β playing the paper's τ:

    ``(h̄ − 1/(2β))²`` with the per-token margin ``h̄ = Δ_w/|y_w| − Δ_l/|y_l|``. The division by the
    completion lengths is TRL's choice, confirmed with the IPO authors; it keeps β comparable across lengths.
    """
    return (pair.normalized_margin - 1.0 / (2.0 * beta)) ** 2, *pair.dpo_rewards(beta)


def sigmoid_norm(pair: PairLogps, beta: float) -> LossOutput:
    """Length-normalised DPO (TRL's ``sigmoid_norm``): ``−log σ(β·h̄)``, ``h̄ = Δ_w/|y_w| − Δ_l/|y_l|``."""
    return -F.logsigmoid(beta * pair.normalized_margin), *pair.dpo_rewards(beta)


def exo_pair(pair: PairLogps, beta: float, *, epsilon: float = 1e-3) -> LossOutput:
    """EXO for pairs (Ji et al. 2024, arXiv:2402.00856, Eq. 16): ``KL(q ‖ p)`` over {chosen, rejected},

    ``q = (σ(β·h), σ(−β·h))``, ``p = (1−ε, ε)``:
    ``σ(βh)·(log σ(βh) − log(1−ε)) + σ(−βh)·(log σ(−βh) − log ε)``.
    ``epsilon`` is TRL's ``label_smoothing`` for this loss (TRL rejects 0; the paper recommends 1e-3).
    """
    z = beta * pair.margin
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-epsilon)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(epsilon)
    )
    return losses, *pair.dpo_rewards(beta)


def discopop(pair: PairLogps, beta: float, *, tau: float = 0.05) -> LossOutput:
    """DiscoPOP / log-ratio modulated loss (Lu et al. 2024, arXiv:2406.08414, Eq. 5), ``z = β·h``:

    ``(1 − σ(z/τ))·(−log σ(z)) + σ(z/τ)·e^{−z}``; ``tau`` is TRL's ``discopop_tau`` (default 0.05).
    The second term is computed as ``exp(log σ(z/τ) − z)`` so that very negative ``z`` stays finite.
    Not monotone: for ``|z|`` within a few τ of 0 the mix moves from ``log 2`` towards ``1`` and the loss
    *rises* with the margin (``dloss/dz = 5(1 − log 2) − 0.75 > 0`` at ``z = 0`` for τ = 0.05), the
    non-convexity the paper discusses; outside that band it behaves like DPO.
    """
    z = beta * pair.margin
    mix = torch.sigmoid(z / tau)
    losses = (1.0 - mix) * -F.logsigmoid(z) + torch.exp(F.logsigmoid(z / tau) - z)
    return losses, *pair.dpo_rewards(beta)


def dpop(pair: PairLogps, beta: float, *, lambda_: float = 50.0) -> LossOutput:
    """DPO-Positive (Pal et al. 2024, "Smaug", arXiv:2402.13228, Eq. 3):

    ``−log σ(β·(h − λ·max(0, log π_ref(y_w|x) − log π(y_w|x))))``: the extra term penalises any drop of
    the chosen completion's likelihood below the reference. ``lambda_`` defaults to the paper's 50.
    """
    penalty = torch.relu(-pair.chosen_logratios)
    return -F.logsigmoid(beta * (pair.margin - lambda_ * penalty)), *pair.dpo_rewards(beta)


def odpo(pair: PairLogps, beta: float, *, offset: Tensor | float | None = None, alpha: float = 1.0) -> LossOutput:
    """DPO with an offset, ODPO (Amini et al. 2024, arXiv:2402.10571): ``−log σ(β·h − α·offset)``.

    ``offset`` is given per pair (``[B]`` tensor, or one float for all): the paper uses
    ``offset = log(score(y_w) − score(y_l))`` from the judge's scores, scaled by ``alpha``. It comes with
    the batch (see ``BATCH_PARAMS``), not from the recipe; there is no default.
    """
    if offset is None:
        raise ValueError("loss_type 'odpo' needs a per-pair `offset` (a [B] tensor or a float)")
    margin = pair.margin
    if isinstance(offset, Tensor):
        if offset.dim() > 1 or (offset.dim() == 1 and offset.shape != margin.shape):
            raise ValueError(f"odpo offset must be a scalar or shape {tuple(margin.shape)}, got {tuple(offset.shape)}")
        offset = offset.to(margin.dtype)
    return -F.logsigmoid(beta * margin - alpha * offset), *pair.dpo_rewards(beta)


def aot(pair: PairLogps, beta: float, *, label_smoothing: float = 0.0) -> LossOutput:
    """Alignment via Optimal Transport, paired (Melnyk et al. 2024, arXiv:2406.05882):

    sort ``log π(y_w) − log π(y_l)`` and ``log π_ref(y_w) − log π_ref(y_l)`` over the batch separately
    (ascending), ``δ = sorted_policy − sorted_ref``, then the smoothed logistic loss of ``β·δ``. Entry i of
    ``losses`` belongs to the i-th quantile, not to pair i (the rewards do belong to pair i). The loss
    couples the whole batch: its mean is what is meaningful.
    """
    policy_sorted, _ = torch.sort(pair.policy_chosen - pair.policy_rejected, dim=0)
    ref_sorted, _ = torch.sort(pair.ref_chosen - pair.ref_rejected, dim=0)  # type: ignore[operator]
    losses = _smoothed_logistic(beta * (policy_sorted - ref_sorted), label_smoothing)
    return losses, *pair.dpo_rewards(beta)


def aot_unpaired(pair: PairLogps, beta: float, *, label_smoothing: float = 0.0) -> LossOutput:
    """AOT, unpaired (Melnyk et al. 2024): ``δ = sort(Δ_w) − sort(Δ_l)`` over the batch, then as :func:`aot`.

    Entry i of ``losses`` belongs to the i-th quantile, not to pair i.
    """
    chosen_sorted, _ = torch.sort(pair.chosen_logratios, dim=0)
    rejected_sorted, _ = torch.sort(pair.rejected_logratios, dim=0)
    losses = _smoothed_logistic(beta * (chosen_sorted - rejected_sorted), label_smoothing)
    return losses, *pair.dpo_rewards(beta)
