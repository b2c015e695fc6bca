"""ODPO's per-pair offsets come from the judge scores and travel in the pairs table."""

from __future__ import annotations

import math

import pytest
from test_build_pairs import judgments

from selfplay.config.schema import PairingConfig
from selfplay.pairs import PAIRS_SCHEMA, build_pairs
from selfplay.pairs.build import MIN_SCORE_GAP, odpo_offset


def test_offsets_are_the_log_of_the_raw_score_difference():
    groups = {"a": [("x", 0.9, 1), ("y", 0.15, 3)], "b": [("p", 1.0, 1), ("q", 0.0, 1)],
              "c": [("s", 0.5, 4), ("t", 0.5, 1)]}
    cfg = PairingConfig(drop_ties=False, length_penalty=0.01)
    pairs, _ = build_pairs(judgments(groups), cfg, "best_worst")
    assert "offset" in PAIRS_SCHEMA.names and pairs.schema.field("offset").type == "double"
    got = {r["prompt_id"]: r["offset"] for r in pairs.to_pylist()}
    assert got["a"] == pytest.approx(math.log(0.75))  # raw scores, not the length-penalised ranking
    assert got["b"] == 0.0  # a 0/1 verifier: every offset is log 1 = 0, ODPO is DPO
    assert got["c"] == pytest.approx(math.log(MIN_SCORE_GAP))  # a kept tie asks for (almost) no margin


def test_reference_pairs_and_missing_scores():
    pairs, _ = build_pairs(judgments({"a": [("x", 0.25, 1)]}), PairingConfig(), "reference")
    assert pairs.column("offset").to_pylist() == [pytest.approx(math.log(0.75))]  # the reference scores 1
    assert odpo_offset(None, 0.3) is None and odpo_offset(0.3, None) is None
