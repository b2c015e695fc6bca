"""``preference_loss``: one entry point for every pairwise preference loss, and the tables that describe them.

The tables are the contract with the config schema: ``LOSS_PARAMS`` lists, per loss type, the extra
parameters it accepts and their defaults; ``NEEDS_LENGTHS`` the types that need completion lengths;
``REFERENCE_FREE`` the types that never read reference log-probs; ``BATCH_PARAMS`` the parameters that
come with each batch from the trainer rather than from a recipe. ``validate_loss_params`` is the one
place that checks a parameter dict (names and ranges); the schema and ``preference_loss`` both call it.

The dispatch is a plain dict from name to function; each function lives in the module of its family
(``pairwise``, ``pointwise``, ``reference_free``) with its formula and paper in the docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from selfplay.losses import pairwise, pointwise, reference_free
from selfplay.losses.pair import LossOutput, PairLogps

LOSS_FUNCTIONS: dict[str, Callable[..., LossOutput]] = {
    "sigmoid": pairwise.sigmoid,
    "robust": pairwise.robust,
    "ipo": pairwise.ipo,
    "hinge": pairwise.hinge,
    "dpop": pairwise.dpop,
    "odpo": pairwise.odpo,
    "exo_pair": pairwise.exo_pair,
    "aot": pairwise.aot,
    "aot_unpaired": pairwise.aot_unpaired,
    "discopop": pairwise.discopop,
    "sigmoid_norm": pairwise.sigmoid_norm,
    "sppo_hard": pointwise.sppo_hard,
    "sppo": pointwise.sppo,
    "nca_pair": pointwise.nca_pair,
    "bco_pair": pointwise.bco_pair,
    "apo_zero": pointwise.apo_zero,
    "apo_down": pointwise.apo_down,
    "simpo": reference_free.simpo,
    "orpo": reference_free.orpo,
    "slic": reference_free.slic,
}

LOSS_PARAMS: dict[str, dict[str, object]] = {
    "sigmoid": {"label_smoothing": 0.0},
    "robust": {"label_smoothing": 0.0},
    "ipo": {},
    "hinge": {},
    "dpop": {"lambda_": 50.0},
    "odpo": {"offset": None, "alpha": 1.0},
    "exo_pair": {"epsilon": 1e-3},
    "aot": {"label_smoothing": 0.0},
    "aot_unpaired": {"label_smoothing": 0.0},
    "discopop": {"tau": 0.05},
    "sigmoid_norm": {},
    "sppo_hard": {},
    "sppo": {"chosen_probs": None, "rejected_probs": None},
    "nca_pair": {},
    "bco_pair": {"delta": 0.0},
    "apo_zero": {},
    "apo_down": {},
    "simpo": {"gamma": 0.5},
    "orpo": {"lambda_": 0.1},
    "slic": {"delta": 1.0, "lambda_": 0.1},
}
"""Every preference ``loss_type`` -> its extra parameters and their defaults (``None``: no default)."""

NEEDS_LENGTHS: frozenset[str] = frozenset({"ipo", "sigmoid_norm", "simpo", "orpo"})
"""Loss types that divide by completion lengths: ``chosen_lengths``/``rejected_lengths`` are required."""

REFERENCE_FREE: frozenset[str] = frozenset({"simpo", "orpo", "slic"})
"""Loss types that never read reference log-probs: a recipe using one needs no reference model."""

BATCH_PARAMS: dict[str, frozenset[str]] = {"odpo": frozenset({"offset"}), "bco_pair": frozenset({"delta"}),
                                           "sppo": frozenset({"chosen_probs", "rejected_probs"})}
"""Parameters computed by the trainer per batch (ODPO's per-pair offsets, BCO's running reward mean,
SPPO's per-pair win probabilities, which the trainer reads from the pairs' judge scores)."""

# Range checks by parameter name; every number must also be finite.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "label_smoothing": (lambda v: 0.0 <= v < 0.5, "in [0, 0.5)"),
    "epsilon": (lambda v: 0.0 < v < 1.0, "in (0, 1)"),
    "tau": (lambda v: v > 0.0, "> 0"),
    "lambda_": (lambda v: v >= 0.0, ">= 0"),
}
_TENSOR_OK = {"offset", "delta", "chosen_probs", "rejected_probs"}  # may be a tensor (per pair, or a 0-d state)


def validate_loss_params(loss_type: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check ``params`` for ``loss_type`` and return them completed with the defaults.

    Raises ``ValueError`` for an unknown loss type (listing the known ones), an unknown parameter (naming
    the loss type, the bad names and the allowed names), or a value of the wrong type or range.
    """
    if loss_type not in LOSS_PARAMS:
        raise ValueError(f"unknown preference loss_type {loss_type!r}; allowed: {sorted(LOSS_PARAMS)}")
    allowed = LOSS_PARAMS[loss_type]
    params = dict(params or {})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"loss_type {loss_type!r} got unknown parameter(s) {unknown}; allowed: {sorted(allowed)}")
    for name, value in params.items():
        if value is None or (isinstance(value, Tensor) and name in _TENSOR_OK):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"loss_type {loss_type!r}: {name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"loss_type {loss_type!r}: {name} must be finite, got {value}")
        check, text = _RANGES.get(name, (lambda v: True, ""))
        if not check(float(value)):
            raise ValueError(f"loss_type {loss_type!r}: {name} must be {text}, got {value}")
    return {**allowed, **params}


def preference_loss(
    loss_type: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    **params: Any,
) -> LossOutput:
    """Per-pair preference loss of type ``loss_type`` and the implicit rewards, for logging.

    Args:
        loss_type: a key of ``LOSS_PARAMS``; see the function of that name in ``pairwise``,
            ``pointwise`` or ``reference_free`` for its formula and paper.
        policy_chosen_logps, policy_rejected_logps: ``[B]`` policy log-probs, summed over completion tokens.
        ref_chosen_logps, ref_rejected_logps: ``[B]`` reference log-probs, summed likewise; may be ``None``
            for ``REFERENCE_FREE`` types (they are ignored there).
        beta: inverse temperature β > 0 (IPO's τ; for ``orpo``/``slic`` it only scales the rewards).
        chosen_lengths, rejected_lengths: ``[B]`` completion-token counts; required for ``NEEDS_LENGTHS``.
        **params: the loss's extra parameters (``LOSS_PARAMS[loss_type]``), defaults filled in.

    Returns:
        ``(losses[B], chosen_rewards[B], rejected_rewards[B])`` in float32 (float64 if given float64);
        the rewards are detached. Reduce ``losses`` with ``.mean()``.
    """
    params = validate_loss_params(loss_type, params)
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    needs_ref = loss_type not in REFERENCE_FREE
    if needs_ref and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"loss_type {loss_type!r} needs ref_chosen_logps and ref_rejected_logps (got None)")
    needs_lengths = loss_type in NEEDS_LENGTHS
    if needs_lengths and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"loss_type {loss_type!r} needs chosen_lengths and rejected_lengths (completion-token counts)")
    pair = PairLogps.build(  # shape-checks whatever was given, needed or not
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_lengths,
        rejected_lengths,
    )
    return LOSS_FUNCTIONS[loss_type](pair, float(beta), **params)
