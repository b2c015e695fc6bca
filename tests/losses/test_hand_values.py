"""Every loss type against numbers derived by hand with ``math``, never by calling the library.

One batch of two pairs is used throughout (β = 0.5), chosen so that sorting-based losses (AOT) differ
from per-pair ones:

    pair | log π(y_w)  log π(y_l)  log π_ref(y_w)  log π_ref(y_l) | Δ_w  Δ_l   h  | βh  | |y_w| |y_l|
      1  |    -4          -7           -5              -5         |  1   -2    3  | 1.5 |   4    2
      2  |    -3          -2           -2              -3         | -1    1   -2  | -1  |   1    2
"""

from __future__ import annotations

import math

import pytest
import torch

from selfplay.losses import kto_loss, preference_loss, tdpo_loss

BETA = 0.5
PC, PR, RC, RR = [-4.0, -3.0], [-7.0, -2.0], [-5.0, -2.0], [-5.0, -3.0]
LC, LR = [4, 1], [2, 2]


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def log_odds(a: float) -> float:
    return a - math.log(1.0 - math.exp(a))


def run(loss_type: str, **params):
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    return preference_loss(
        loss_type,
        t(PC),
        t(PR),
        t(RC),
        t(RR),
        beta=BETA,
        chosen_lengths=torch.tensor(LC),
        rejected_lengths=torch.tensor(LR),
        **params,
    )


# βh = [1.5, -1]; Δ_w = [1, -1]; Δ_l = [-2, 1]
EXPECTED: list[tuple[str, dict, list[float]]] = [
    ("sigmoid", {}, [-logsig(1.5), -logsig(-1.0)]),
    ("sigmoid", {"label_smoothing": 0.2}, [-0.8 * logsig(z) - 0.2 * logsig(-z) for z in (1.5, -1.0)]),
    ("robust", {"label_smoothing": 0.2}, [(-0.8 * logsig(z) + 0.2 * logsig(-z)) / 0.6 for z in (1.5, -1.0)]),
    ("hinge", {}, [0.0, 2.0]),  # max(0, 1 - 1.5), max(0, 1 + 1)
    # per-token margins: 1/4 - (-2)/2 = 1.25 and -1/1 - 1/2 = -1.5; target 1/(2β) = 1
    ("ipo", {}, [0.25**2, 2.5**2]),
    ("sigmoid_norm", {}, [-logsig(0.5 * 1.25), -logsig(0.5 * -1.5)]),
    (
        "exo_pair",
        {"epsilon": 1e-3},
        [sig(z) * (logsig(z) - math.log(1 - 1e-3)) + sig(-z) * (logsig(-z) - math.log(1e-3)) for z in (1.5, -1.0)],
    ),
    ("discopop", {"tau": 1.0}, [(1 - sig(z)) * -logsig(z) + sig(z) * math.exp(-z) for z in (1.5, -1.0)]),
    ("discopop", {}, [(1 - sig(z / 0.05)) * -logsig(z) + sig(z / 0.05) * math.exp(-z) for z in (1.5, -1.0)]),
    # pair 1: Δ_w > 0, no penalty; pair 2: penalty max(0, -Δ_w) = 1, β(h - 2·1) = 0.5·(-4) = -2
    ("dpop", {"lambda_": 2.0}, [-logsig(1.5), -logsig(-2.0)]),
    ("dpop", {}, [-logsig(1.5), -logsig(0.5 * (-2.0 - 50.0))]),
    # βh - α·offset = 1.5 - 2·0.5 and -1 - 2·1
    ("odpo", {"offset": torch.tensor([0.5, 1.0]), "alpha": 2.0}, [-logsig(0.5), -logsig(-3.0)]),
    ("odpo", {"offset": 1.0}, [-logsig(0.5), -logsig(-2.0)]),
    # policy diffs [3, -1] -> sorted [-1, 3]; ref diffs [0, 1] -> sorted [0, 1]; δ = [-1, 2]
    ("aot", {}, [-logsig(-0.5), -logsig(1.0)]),
    ("aot", {"label_smoothing": 0.1}, [-0.9 * logsig(z) - 0.1 * logsig(-z) for z in (-0.5, 1.0)]),
    # sorted Δ_w = [-1, 1], sorted Δ_l = [-2, 1]; δ = [1, 0]
    ("aot_unpaired", {}, [-logsig(0.5), -logsig(0.0)]),
    # r_w = βΔ_w = [0.5, -0.5], r_l = [-1, 0.5]
    (
        "nca_pair",
        {},
        [-logsig(rw) - 0.5 * logsig(-rw) - 0.5 * logsig(-rl) for rw, rl in ((0.5, -1.0), (-0.5, 0.5))],
    ),
    ("bco_pair", {}, [-logsig(0.5) - logsig(1.0), -logsig(-0.5) - logsig(-0.5)]),
    ("bco_pair", {"delta": 0.25}, [-logsig(0.25) - logsig(1.25), -logsig(-0.75) - logsig(-0.25)]),
    # 1/(2β) = 1: (Δ_w - 1)² + (Δ_l + 1)²
    ("sppo_hard", {}, [0.0 + 1.0, 4.0 + 4.0]),
    # targets (P - 1/2)/β: chosen [0.5, 0], rejected [-0.5, 0.2]; ½[(1 - 0.5)² + (-2 + 0.5)²], ½[1 + 0.8²]
    ("sppo", {"chosen_probs": torch.tensor([0.75, 0.5], dtype=torch.float64),
              "rejected_probs": torch.tensor([0.25, 0.6], dtype=torch.float64)}, [1.25, 0.82]),
    ("sppo", {"chosen_probs": 1.0, "rejected_probs": 0.0}, [0.5 * (0.0 + 1.0), 0.5 * (4.0 + 4.0)]),  # = sppo_hard / 2
    ("apo_zero", {}, [(1 - sig(0.5)) + sig(-1.0), (1 - sig(-0.5)) + sig(0.5)]),
    ("apo_down", {}, [sig(0.5) + 1 - sig(1.5), sig(-0.5) + 1 - sig(-1.0)]),
    # average log-probs: chosen [-1, -3], rejected [-3.5, -1]; β·diff - γ = [1.25 - 0.5, -1 - 0.5]
    ("simpo", {}, [-logsig(0.75), -logsig(-1.5)]),
    ("simpo", {"gamma": 0.0}, [-logsig(1.25), -logsig(-1.0)]),
    (
        "orpo",
        {"lambda_": 0.1},
        [
            1.0 - 0.1 * logsig(log_odds(-1.0) - log_odds(-3.5)),
            3.0 - 0.1 * logsig(log_odds(-3.0) - log_odds(-1.0)),
        ],
    ),
    (
        "orpo",
        {"lambda_": 1.0},
        [1.0 - logsig(log_odds(-1.0) - log_odds(-3.5)), 3.0 - logsig(log_odds(-3.0) - log_odds(-1.0))],
    ),
    # max(0, 1 + 4 - 7) + 0.1·4 and max(0, 1 + 3 - 2) + 0.1·3
    ("slic", {}, [0.4, 2.3]),
    ("slic", {"delta": 3.0, "lambda_": 0.0}, [0.0, 4.0]),
]


@pytest.mark.parametrize(
    ("loss_type", "params", "expected"),
    EXPECTED,
    ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(EXPECTED)],
)
def test_loss_matches_hand_computation(loss_type, params, expected):
    losses, _, _ = run(loss_type, **params)
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_every_loss_type_has_a_hand_value():
    from selfplay.losses import LOSS_PARAMS

    assert {name for name, _, _ in EXPECTED} == set(LOSS_PARAMS)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "aot", "bco_pair", "apo_down"])
def test_reference_based_rewards_are_beta_times_summed_logratio(loss_type):
    _, chosen, rejected = run(loss_type)
    torch.testing.assert_close(chosen, torch.tensor([0.5, -0.5], dtype=torch.float64))
    torch.testing.assert_close(rejected, torch.tensor([-1.0, 0.5], dtype=torch.float64))


@pytest.mark.parametrize(
    ("loss_type", "chosen", "rejected"),
    [
        ("simpo", [-0.5, -1.5], [-1.75, -0.5]),
        ("orpo", [-0.5, -1.5], [-1.75, -0.5]),
        ("slic", [-2.0, -1.5], [-3.5, -1.0]),
    ],
)
def test_reference_free_rewards(loss_type, chosen, rejected):
    _, got_chosen, got_rejected = run(loss_type)
    torch.testing.assert_close(got_chosen, torch.tensor(chosen, dtype=torch.float64))
    torch.testing.assert_close(got_rejected, torch.tensor(rejected, dtype=torch.float64))


def test_kto_hand_values():
    # r = policy - ref = [1, -1, 0]; KL pairs: [-4+5, -5+5.5] = [1, 0.5] -> z0 = 0.75
    losses, rewards, kl = kto_loss(
        torch.tensor([-2.0, -3.0, -1.0], dtype=torch.float64),
        torch.tensor([-3.0, -2.0, -1.0], dtype=torch.float64),
        torch.tensor([True, False, True]),
        torch.tensor([-4.0, -5.0], dtype=torch.float64),
        torch.tensor([-5.0, -5.5], dtype=torch.float64),
        beta=0.5,
        desirable_weight=1.5,
        undesirable_weight=2.0,
    )
    expected = [1.5 * (1 - sig(0.5 * (1 - 0.75))), 2.0 * (1 - sig(0.5 * (0.75 + 1))), 1.5 * (1 - sig(-0.375))]
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(rewards, torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64))
    assert kl.item() == pytest.approx(0.75)


def test_kto_reference_point_is_clamped_at_zero_and_detached():
    policy = torch.tensor([-2.0, -3.0], requires_grad=True)
    kl_policy = torch.tensor([-6.0, -6.0], requires_grad=True)  # mean log-ratio -1 -> clamped to 0
    losses, _, kl = kto_loss(
        policy,
        torch.tensor([-3.0, -2.0]),
        torch.tensor([True, False]),
        kl_policy,
        torch.tensor([-5.0, -5.0]),
        beta=1.0,
    )
    assert kl.item() == 0.0
    torch.testing.assert_close(losses, torch.tensor([1 - sig(1.0), 1 - sig(1.0)]))
    losses.sum().backward()
    assert kl_policy.grad is None  # z0 carries no gradient
    assert policy.grad[0] < 0 < policy.grad[1]


def _tdpo(variant: int, **kw):
    t = lambda v: torch.tensor([v], dtype=torch.float64, requires_grad=True)
    kl_w, kl_l = t(0.5), t(2.0)
    out = tdpo_loss(t(-4.0), t(-7.0), t(-5.0), t(-5.0), kl_w, kl_l, beta=0.5, variant=variant, **kw)
    return out, kl_w, kl_l


def test_tdpo1_and_tdpo2_hand_values():
    # u = Δ_w - Δ_l = 1 - (-2) = 3, D_w = 0.5, D_l = 2
    (losses1, chosen, rejected), _, _ = _tdpo(1)
    assert losses1.item() == pytest.approx(-logsig(0.5 * (3 - (2.0 - 0.5))))
    assert chosen.item() == pytest.approx(0.5 * (1 + 0.5))  # β(Δ_w + D_w)
    assert rejected.item() == pytest.approx(0.5 * (-2 + 2.0))
    (losses2, _, _), _, _ = _tdpo(2, alpha=0.5)
    assert losses2.item() == pytest.approx(-logsig(0.5 * (3 - 0.5 * (2.0 - 0.5))))
    (losses3, _, _), _, _ = _tdpo(2, alpha=1.0)  # α = 1 gives TDPO1's value, not its gradient
    assert losses3.item() == pytest.approx(losses1.item())


def test_tdpo2_stops_the_gradient_of_the_chosen_kl_only():
    (losses1, _, _), kl_w1, kl_l1 = _tdpo(1)
    losses1.sum().backward()
    assert kl_w1.grad.item() < 0 < kl_l1.grad.item()
    (losses2, _, _), kl_w2, kl_l2 = _tdpo(2)
    losses2.sum().backward()
    assert kl_w2.grad is None and kl_l2.grad.item() > 0
    # d/dD_l of -log σ(β(u - α D_l + ...)) = β α (1 - σ(z)), z = 0.5·(3 - 0.75)
    assert kl_l2.grad.item() == pytest.approx(0.5 * 0.5 * (1 - sig(0.5 * 2.25)))


def test_tdpo_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        _tdpo(3)


def test_sppo_needs_win_probabilities_in_the_unit_interval():
    with pytest.raises(ValueError, match="needs chosen_probs and rejected_probs"):
        run("sppo")
    with pytest.raises(ValueError, match=r"win probabilities in \[0, 1\]"):
        run("sppo", chosen_probs=torch.tensor([1.5, 0.5]), rejected_probs=0.5)
