"""Gradient directions, numerical robustness, and the contract with the config schema."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from selfplay.losses import (
    BATCH_PARAMS,
    KTO_PARAMS,
    LOSS_FUNCTIONS,
    LOSS_PARAMS,
    NEEDS_LENGTHS,
    REFERENCE_FREE,
    TDPO_PARAMS,
    kto_loss,
    preference_loss,
    tdpo_loss,
    validate_loss_params,
)

REQUIRED = {
    "sigmoid", "robust", "ipo", "hinge", "dpop", "odpo", "simpo", "orpo", "slic", "sppo_hard", "nca_pair",
    "bco_pair", "exo_pair", "apo_zero", "apo_down", "aot", "aot_unpaired", "discopop", "sigmoid_norm",
}  # fmt: skip


def extra(loss_type: str, batch: int) -> dict:
    if loss_type == "sppo":
        return {"chosen_probs": torch.full((batch,), 0.7), "rejected_probs": torch.full((batch,), 0.4)}
    return {"offset": torch.full((batch,), 0.3)} if loss_type == "odpo" else {}


def call(loss_type: str, pc, pr, rc, rr, lengths, **params):
    return preference_loss(
        loss_type, pc, pr, rc, rr, beta=0.1, chosen_lengths=lengths, rejected_lengths=lengths + 2, **params
    )


def test_all_required_loss_types_exist_with_consistent_tables():
    known = set(LOSS_PARAMS)
    assert known >= REQUIRED
    assert known == set(LOSS_FUNCTIONS)
    assert {"ipo", "sigmoid_norm", "simpo", "orpo"} == NEEDS_LENGTHS
    assert {"simpo", "orpo", "slic"} == REFERENCE_FREE
    for loss_type, names in BATCH_PARAMS.items():
        assert names <= set(LOSS_PARAMS[loss_type])


def keyword_defaults(fn) -> dict:
    params = inspect.signature(fn).parameters.items()
    return {n: p.default for n, p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "beta"}


@pytest.mark.parametrize("loss_type", sorted(LOSS_PARAMS))
def test_loss_params_match_the_function_signature(loss_type):
    assert keyword_defaults(LOSS_FUNCTIONS[loss_type]) == LOSS_PARAMS[loss_type]


def test_kto_and_tdpo_params_match_their_signatures():
    batch_param = {"kl_mean": None}  # from the trainer (the step-wide KL estimate), not from a recipe
    assert keyword_defaults(kto_loss) == {**KTO_PARAMS, **batch_param}
    assert keyword_defaults(tdpo_loss) == TDPO_PARAMS


@pytest.mark.parametrize("loss_type", sorted(set(LOSS_PARAMS) - {"discopop"}))  # discopop: test below
def test_gradient_signs(loss_type):
    """Near the reference: raising log π(y_w) lowers the loss, raising log π(y_l) raises it."""
    gen = torch.Generator().manual_seed(0)
    batch = 6
    ref_c, ref_r = -20 - 10 * torch.rand(batch, generator=gen), -20 - 10 * torch.rand(batch, generator=gen)
    pc = (ref_c + 0.3 * torch.randn(batch, generator=gen)).requires_grad_()
    pr = (ref_r + 0.3 * torch.randn(batch, generator=gen)).requires_grad_()
    lengths = torch.randint(5, 10, (batch,), generator=gen)
    params = {"delta": 100.0} if loss_type == "slic" else extra(loss_type, batch)  # margin unmet -> active
    losses, _, _ = call(loss_type, pc, pr, ref_c, ref_r, lengths, **params)
    losses.sum().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert (pr.grad > 0).all(), pr.grad
    if loss_type == "apo_down":  # designed to lower the chosen likelihood too: σ'(βΔ_w) vs σ'(βh)
        return
    assert (pc.grad < 0).all(), pc.grad


def test_discopop_gradient_signs_outside_and_inside_its_non_monotone_band():
    # z = βh ∈ {-1, -0.5, 0.5, 1}: like DPO. z = 0 (τ = 0.05): dloss/dz = (1/(4τ))(1 - log 2) - 0.75 > 0.
    h = torch.tensor([-10.0, -5.0, 5.0, 10.0, 0.0], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(5, dtype=torch.float64)
    losses, _, _ = preference_loss("discopop", h, zero, zero, zero, beta=0.1)
    losses.sum().backward()
    assert (h.grad[:4] < 0).all(), h.grad
    assert h.grad[4].item() == pytest.approx(0.1 * (5 * (1 - math.log(2)) - 0.75))


@pytest.mark.parametrize("loss_type", sorted(LOSS_PARAMS))
def test_extreme_log_prob_gaps_stay_finite(loss_type):
    """All 16 combinations of log-probs in {-1, -1e4}: gaps of ±1e4 between every pair of inputs."""
    grid = torch.cartesian_prod(*[torch.tensor([-1.0, -1e4])] * 4)
    pc, pr, rc, rr = (grid[:, i].clone().requires_grad_() for i in range(4))
    lengths = torch.ones(16, dtype=torch.long)
    for beta in (0.1, 10.0):
        for x in (pc, pr, rc, rr):
            x.grad = None
        losses, chosen, rejected = preference_loss(
            loss_type, pc, pr, rc, rr, beta=beta, chosen_lengths=lengths, rejected_lengths=lengths,
            **extra(loss_type, 16),
        )  # fmt: skip
        assert torch.isfinite(losses).all(), (beta, losses)
        assert torch.isfinite(chosen).all() and torch.isfinite(rejected).all()
        losses.sum().backward()
        for x in (pc, pr, rc, rr):
            assert x.grad is None or torch.isfinite(x.grad).all(), (beta, x.grad)


def test_kto_and_tdpo_extremes_stay_finite():
    big = torch.tensor([-1.0, -1e4, -1.0, -1e4], requires_grad=True)
    small = torch.tensor([-1e4, -1.0, -1.0, -1e4])
    losses, _, _ = kto_loss(big, small, torch.tensor([True, False, True, False]), small, big.detach(), beta=10.0)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(big.grad).all()
    kl = torch.tensor([0.0, 1e4, 1e4, 0.0], requires_grad=True)
    for variant in (1, 2):
        out, _, _ = tdpo_loss(big, small, small, big.detach(), kl, kl.flip(0), beta=10.0, variant=variant)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(kl.grad).all()


def test_reference_free_losses_ignore_the_reference():
    pc, pr = torch.tensor([-5.0, -9.0]), torch.tensor([-7.0, -3.0])
    lengths = torch.tensor([3, 4])
    for loss_type in sorted(REFERENCE_FREE):
        without, _, _ = call(loss_type, pc, pr, None, None, lengths)
        with_ref, _, _ = call(loss_type, pc, pr, torch.tensor([-1.0, -2.0]), torch.tensor([-8.0, -1.0]), lengths)
        torch.testing.assert_close(without, with_ref)


def test_loss_types_outside_needs_lengths_do_not_read_lengths():
    pc, pr, rc, rr = (torch.tensor([-5.0, -9.0]) - i for i in range(4))
    for loss_type in sorted(set(LOSS_PARAMS) - NEEDS_LENGTHS):
        kw = extra(loss_type, 2)
        a, _, _ = preference_loss(loss_type, pc, pr, rc, rr, beta=0.1, **kw)
        b, _, _ = call(loss_type, pc, pr, rc, rr, torch.tensor([1, 7]), **kw)
        torch.testing.assert_close(a, b)


def test_half_precision_inputs_are_computed_in_float32():
    x = torch.tensor([-5.0, -9.0], dtype=torch.bfloat16)
    losses, chosen, _ = preference_loss("sigmoid", x, x - 1, x, x, beta=0.1)
    assert losses.dtype == torch.float32 and chosen.dtype == torch.float32


# --- errors -------------------------------------------------------------------------------------------
def _pair(batch: int = 2):
    return [torch.zeros(batch) for _ in range(4)]


def test_unknown_loss_type_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown preference loss_type 'dpo'") as err:
        preference_loss("dpo", *_pair(), beta=0.1)
    assert "sigmoid" in str(err.value) and "sigmoid_norm" in str(err.value)


def test_unknown_param_names_the_loss_the_bad_name_and_the_allowed_names():
    with pytest.raises(ValueError) as err:
        preference_loss("dpop", *_pair(), beta=0.1, lambda_=1.0, lamda=2.0)
    message = str(err.value)
    assert "'dpop'" in message and "lamda" in message and "lambda_" in message
    with pytest.raises(ValueError, match="'ipo'.*'label_smoothing'.*allowed: \\[\\]"):
        validate_loss_params("ipo", {"label_smoothing": 0.1})


@pytest.mark.parametrize(
    ("loss_type", "params", "match"),
    [
        ("robust", {"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ("exo_pair", {"epsilon": 0.0}, r"epsilon must be in \(0, 1\)"),
        ("discopop", {"tau": 0.0}, "tau must be > 0"),
        ("dpop", {"lambda_": float("nan")}, "lambda_ must be finite"),
        ("sigmoid", {"label_smoothing": "0.1"}, "label_smoothing must be a number"),
    ],
)
def test_out_of_range_params_are_rejected(loss_type, params, match):
    with pytest.raises(ValueError, match=match):
        validate_loss_params(loss_type, params)


def test_validate_fills_defaults():
    assert validate_loss_params("slic", {"delta": 2.0}) == {"delta": 2.0, "lambda_": 0.1}
    assert validate_loss_params("sigmoid") == {"label_smoothing": 0.0}


@pytest.mark.parametrize("loss_type", sorted(NEEDS_LENGTHS))
def test_missing_lengths_are_an_error(loss_type):
    with pytest.raises(ValueError, match=f"'{loss_type}' needs chosen_lengths and rejected_lengths"):
        preference_loss(loss_type, *_pair(), beta=0.1, chosen_lengths=torch.ones(2))


def test_shape_mismatches_are_errors():
    pc, pr, rc, _ = _pair()
    with pytest.raises(ValueError, match="same shape"):
        preference_loss("sigmoid", pc, pr, rc, torch.zeros(3), beta=0.1)
    with pytest.raises(ValueError, match="1-D"):
        preference_loss("sigmoid", pc.view(2, 1), pr, rc, rc, beta=0.1)
    with pytest.raises(ValueError, match="same shape"):
        preference_loss("ipo", pc, pr, rc, rc, beta=0.1, chosen_lengths=torch.ones(3), rejected_lengths=torch.ones(2))
    with pytest.raises(ValueError, match="offset must be a scalar or shape"):
        preference_loss("odpo", pc, pr, rc, rc, beta=0.1, offset=torch.zeros(3))


def test_missing_reference_offset_or_bad_beta_are_errors():
    pc, pr, rc, rr = _pair()
    with pytest.raises(ValueError, match="'sigmoid' needs ref_chosen_logps"):
        preference_loss("sigmoid", pc, pr, None, None, beta=0.1)
    with pytest.raises(ValueError, match="odpo' needs a per-pair `offset`"):
        preference_loss("odpo", pc, pr, rc, rr, beta=0.1)
    for beta in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="beta"):
            preference_loss("sigmoid", pc, pr, rc, rr, beta=beta)


def test_kto_input_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="labels must be a bool"):
        kto_loss(x, x, torch.ones(3), x, x, beta=0.1)
    with pytest.raises(ValueError, match="ref_logps must be 1-D"):
        kto_loss(x, torch.zeros(2), torch.ones(3, dtype=torch.bool), x, x, beta=0.1)
    with pytest.raises(ValueError, match="non-empty"):
        kto_loss(x, x, torch.ones(3, dtype=torch.bool), torch.zeros(0), torch.zeros(0), beta=0.1)
