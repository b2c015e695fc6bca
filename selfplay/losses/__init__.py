"""Preference losses as pure functions of log-prob tensors: no model, no trainer, only torch.

The trainer computes per-token log-probs once (:mod:`~selfplay.losses.logprobs`), sums them per
completion, and calls one of:

* :func:`preference_loss` — every pairwise loss (DPO family and reference-free), by ``loss_type``:
  ``(losses[B], chosen_rewards[B], rejected_rewards[B]) = preference_loss(loss_type, policy_chosen_logps,
  policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=..., chosen_lengths=...,
  rejected_lengths=..., **params)``. Formulas and papers are in the docstring of the function of the
  same name in :mod:`~selfplay.losses.pairwise` (margin losses), :mod:`~selfplay.losses.pointwise`
  (per-completion log-ratio losses) or :mod:`~selfplay.losses.reference_free` (SimPO, ORPO, SLiC).
* :func:`kto_loss` — unpaired desirable/undesirable completions (:mod:`~selfplay.losses.unpaired`).
* :func:`tdpo_loss` — TDPO1/TDPO2, which also need per-token KL (:mod:`~selfplay.losses.token_level`).

Conventions: log-probs are summed over completion tokens (``[B]``); lengths are completion-token
counts; a loss type whose name is also a TRL 1.16 ``DPOTrainer`` ``loss_type`` gives TRL's value for the
same inputs and parameters (tested against TRL's own code), with the differences listed in each
module's docstring. ``LOSS_PARAMS``, ``NEEDS_LENGTHS``, ``REFERENCE_FREE`` and ``BATCH_PARAMS`` describe
the loss types for the config schema (``KTO_PARAMS``/``TDPO_PARAMS`` for the two other losses);
:func:`validate_loss_params` checks a recipe's parameters, names and ranges.

SPIN (Chen et al. 2024, "Self-Play Fine-Tuning", arXiv:2401.01335) has no loss of its own: it is the
logistic loss (or the hinge loss) with the previous iteration's model as the reference and the SFT
target as the chosen completion against the model's own generation as the rejected one. A recipe says::

    train:
      loss: {type: sigmoid}      # or hinge
      reference: previous        # reference = the policy of the previous iteration
    judge:
      type: sft                  # chosen = the dataset's SFT answer, rejected = the model's sample
"""

from selfplay.losses.logprobs import next_token_targets, sequence_logps, token_kl, token_logps
from selfplay.losses.pair import LossOutput, PairLogps
from selfplay.losses.preference import (
    BATCH_PARAMS,
    LOSS_FUNCTIONS,
    LOSS_PARAMS,
    NEEDS_LENGTHS,
    REFERENCE_FREE,
    preference_loss,
    validate_loss_params,
)
from selfplay.losses.token_level import TDPO_PARAMS, tdpo_loss
from selfplay.losses.unpaired import KTO_PARAMS, kto_loss

__all__ = [
    "BATCH_PARAMS",
    "KTO_PARAMS",
    "LOSS_FUNCTIONS",
    "LOSS_PARAMS",
    "NEEDS_LENGTHS",
    "REFERENCE_FREE",
    "TDPO_PARAMS",
    "LossOutput",
    "PairLogps",
    "kto_loss",
    "next_token_targets",
    "preference_loss",
    "sequence_logps",
    "tdpo_loss",
    "token_kl",
    "token_logps",
    "validate_loss_params",
]
