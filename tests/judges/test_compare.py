"""Win-rate aggregation (SPPO): hand-computed numbers for both-order symmetrisation and undecided pairs."""

from __future__ import annotations

import pytest

from selfplay.judges.compare import comparisons, pair_preference, win_rates


def test_comparisons_enumerate_orders():
    assert comparisons(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert comparisons(3, both_orders=False) == [(0, 1), (0, 2), (1, 2)]
    assert comparisons(1) == []


def test_win_rates_hand_computed():
    # P(first beats second) as the judge reported it, both orders asked
    prefs = {(0, 1): 0.9, (1, 0): 0.3, (0, 2): 0.6, (2, 0): 0.6, (1, 2): 0.2, (2, 1): 0.7}
    # symmetrised: p01 = (0.9 + 1 - 0.3)/2 = 0.8; p02 = (0.6 + 0.4)/2 = 0.5; p12 = (0.2 + 0.3)/2 = 0.25
    assert pair_preference(prefs, 0, 1) == pytest.approx(0.8)
    assert pair_preference(prefs, 1, 0) == pytest.approx(0.2)
    rates = win_rates(prefs, 3)
    # w0 = (0.8 + 0.5)/2; w1 = (0.2 + 0.25)/2; w2 = (0.5 + 0.75)/2
    assert rates == pytest.approx([0.65, 0.225, 0.625])
    assert sum(rates) / 3 == pytest.approx(0.5)  # every comparison hands out exactly one unit


def test_position_bias_cancels():
    always_first = {(i, j): 1.0 for i, j in comparisons(3)}
    assert win_rates(always_first, 3) == [0.5, 0.5, 0.5]


def test_one_order_and_undecided():
    one_order = {(0, 1): 0.7, (0, 2): 1.0, (1, 2): 0.4}
    assert win_rates(one_order, 3) == pytest.approx([0.85, (0.3 + 0.4) / 2, (0.0 + 0.6) / 2])
    undecided = {(0, 1): 1.0, (1, 0): None, (0, 2): 1.0, (2, 0): 0.0, (1, 2): None, (2, 1): None}
    # 0-1 undecided (one order unparseable); 1-2 undecided; only 0-2 decided: 0 beats 2
    assert win_rates(undecided, 3) == [1.0, None, 0.0]
    assert win_rates({}, 1) == [None]
