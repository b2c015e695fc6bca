"""build_pairs on hand-made judgments tables, against pairs worked out by hand for every strategy/option."""

from __future__ import annotations

import pyarrow as pa
import pytest

from selfplay.config.schema import PairingConfig
from selfplay.pairs import PAIRS_SCHEMA, build_pairs

# prompt id -> samples (response, score, token count); reference "R-<id>"
GROUPS: dict[str, list[tuple[str, float | None, int]]] = {
    "p1": [("a", 0.2, 3), ("bb", 0.9, 5), ("c", 0.5, 1), ("dd", 0.9, 2)],
    "p2": [("x", 1.0, 2), ("yy", 1.0, 4)],  # all correct
    "p3": [("u", 0.0, 1), ("v", 0.0, 1)],  # all wrong
    "p4": [("m", 0.5, 1), ("n", 0.5, 1)],  # all tied
    "p5": [("e", 0.3, 1), ("f", None, 1), ("g", 0.4, 1)],  # one unscored
    "p6": [("h", None, 1), ("i", None, 1)],  # nothing scored
}


def judgments(groups: dict[str, list[tuple[str, float | None, int]]], iteration: int = 0,
              references: dict[str, str | None] | None = None) -> pa.Table:
    rows = []
    for pid, samples in groups.items():
        for k, (text, score, n_tokens) in enumerate(samples):
            rows.append({
                "prompt_id": pid, "prompt": f"Q-{pid}", "sample_index": k, "response": text,
                "reference": (references or {}).get(pid, f"R-{pid}"),
                "response_token_ids": list(range(10, 10 + n_tokens)), "finish_reason": "stop",
                "policy_version": iteration, "iteration": iteration, "score": score, "judge": "hand",
            })
    return pa.Table.from_pylist(rows)


def summary(pairs: pa.Table) -> list[tuple[str, str, str, float]]:
    return [(r["pair_id"], r["chosen"], r["rejected"], round(r["margin"], 9)) for r in pairs.to_pylist()]


def test_best_worst_pairs_stats_and_columns():
    pairs, stats = build_pairs(judgments(GROUPS), PairingConfig(), "best_worst", seed=0)
    # p1: best 0.9 tie between samples 1 and 3 -> lowest index (1); worst 0.2 (sample 0)
    assert summary(pairs) == [("0:p1:1:0", "bb", "a", 0.7), ("0:p5:2:0", "g", "e", 0.1)]
    assert pairs.schema == PAIRS_SCHEMA
    row = pairs.to_pylist()[0]
    assert row["chosen_token_ids"] == [10, 11, 12, 13, 14] and row["rejected_token_ids"] == [10, 11, 12]
    assert (row["chosen_score"], row["rejected_score"]) == (0.9, 0.2)
    assert (row["judge"], row["prompt"]) == ("hand", "Q-p1")
    assert (row["prompt_id"], row["iteration"], row["policy_version"]) == ("p1", 0, 0)
    assert stats["prompts"] == 6 and stats["pairs"] == 2
    assert stats["prompts_with_pairs"] == 2 and stats["prompts_without_pair"] == 4
    assert (stats["no_pair_all_correct"], stats["no_pair_all_wrong"], stats["no_pair_all_tied"]) == (1, 1, 1)
    assert stats["no_pair_too_few_scored"] == 1 and stats["unscored_samples"] == 3
    assert stats["mean_margin"] == pytest.approx(0.4)


def test_min_margin_drops_small_margins():
    pairs, stats = build_pairs(judgments(GROUPS), PairingConfig(min_margin=0.2), "best_worst")
    assert summary(pairs) == [("0:p1:1:0", "bb", "a", 0.7)]
    assert stats["no_pair_below_margin"] == 1 and stats["dropped_below_margin"] == 1


def test_length_penalty_ranks_by_penalised_score():
    pairs, _ = build_pairs(judgments(GROUPS), PairingConfig(length_penalty=0.1), "best_worst")
    # p1 penalised: a 0.2-0.3=-0.1, bb 0.9-0.5=0.4, c 0.5-0.1=0.4, dd 0.9-0.2=0.7 -> dd over a, margin 0.8
    # p2 both correct: x 1.0-0.2=0.8 over yy 1.0-0.4=0.6 (shorter correct answer preferred), margin 0.2
    assert summary(pairs)[:2] == [("0:p1:3:0", "dd", "a", 0.8), ("0:p2:0:1", "x", "yy", 0.2)]
    p1 = pairs.to_pylist()[0]
    assert (p1["chosen_score"], p1["rejected_score"]) == (0.9, 0.2)  # raw judge scores are kept


def test_all_pairs_order_ties_and_cap():
    table = judgments({"p1": GROUPS["p1"]})
    pairs, stats = build_pairs(table, PairingConfig(), "all_pairs")
    # (1,3) tie dropped; largest margins first, then chosen index, then rejected index
    assert summary(pairs) == [
        ("0:p1:1:0", "bb", "a", 0.7), ("0:p1:3:0", "dd", "a", 0.7),
        ("0:p1:1:2", "bb", "c", 0.4), ("0:p1:3:2", "dd", "c", 0.4), ("0:p1:2:0", "c", "a", 0.3),
    ]
    assert stats["dropped_ties"] == 1
    capped, stats = build_pairs(table, PairingConfig(max_pairs_per_prompt=2), "all_pairs")
    assert [r[0] for r in summary(capped)] == ["0:p1:1:0", "0:p1:3:0"] and stats["dropped_over_cap"] == 3
    with_ties, _ = build_pairs(table, PairingConfig(drop_ties=False), "all_pairs")
    assert summary(with_ties)[-1] == ("0:p1:1:3", "bb", "dd", 0.0)  # tie kept, lower index chosen
    assert with_ties.num_rows == 6


def test_drop_ties_false_pairs_a_tied_group():
    pairs, _ = build_pairs(judgments({"p4": GROUPS["p4"]}), PairingConfig(drop_ties=False), "best_worst")
    assert summary(pairs) == [("0:p4:0:1", "m", "n", 0.0)]


def test_best_random_is_seeded_per_prompt_and_skips_ties():
    table = judgments(GROUPS)
    picks = set()
    for seed in range(12):
        pairs, _ = build_pairs(table, PairingConfig(), "best_random", seed=seed)
        again, _ = build_pairs(table, PairingConfig(), "best_random", seed=seed)
        alone, _ = build_pairs(judgments({"p1": GROUPS["p1"]}), PairingConfig(), "best_random", seed=seed)
        row = pairs.to_pylist()[0]
        assert row["chosen"] == "bb" and row["prompt_id"] == "p1"
        assert summary(pairs) == summary(again)  # same seed, same pairs
        assert summary(alone)[0] == summary(pairs)[0]  # the pick does not depend on the other prompts
        picks.add(row["rejected"])
    assert picks == {"a", "c"}  # "dd" ties with the best and is never the rejected one


def test_identical_texts_and_duplicates_are_dropped():
    groups = {"q": [("same", 0.9, 1), ("same", 0.1, 1), ("low", 0.0, 1), ("low", 0.0, 1)]}
    pairs, stats = build_pairs(judgments(groups), PairingConfig(), "all_pairs")
    # (0,1) same text; (0,3), (1,2), (1,3) repeat the texts of (0,2); (2,3) is a tie
    assert summary(pairs) == [("0:q:0:2", "same", "low", 0.9)]
    assert (stats["dropped_identical"], stats["dropped_duplicate"], stats["dropped_ties"]) == (1, 3, 1)


def test_reference_strategy_spin():
    groups = {
        "s1": [("the answer", 1.0, 2), ("wrong", 0.0, 3), ("wrong", 0.0, 3), ("other", 0.0, 1)],
        "s2": [("R-s2", 1.0, 1), ("R-s2", 1.0, 1)],  # every sample equals the reference
        "s3": [("z", 0.0, 1)],  # no reference
    }
    refs = {"s1": "the answer", "s2": "R-s2", "s3": None}
    pairs, stats = build_pairs(judgments(groups, iteration=2, references=refs), PairingConfig(), "reference")
    assert summary(pairs) == [("2:s1:ref:1", "the answer", "wrong", 1.0),
                              ("2:s1:ref:3", "the answer", "other", 1.0)]
    row = pairs.to_pylist()[0]
    assert row["chosen_token_ids"] is None and row["rejected_token_ids"] == [10, 11, 12]
    assert (row["chosen_score"], row["rejected_score"], row["iteration"]) == (1.0, 0.0, 2)
    assert stats["no_pair_all_correct"] == 1 and stats["no_pair_no_reference"] == 1
    assert stats["dropped_duplicate"] == 1
    capped, _ = build_pairs(judgments(groups, references=refs), PairingConfig(max_pairs_per_prompt=1),
                            "reference")
    assert [r[0] for r in summary(capped)] == ["0:s1:ref:1"]


def test_unknown_strategy_and_missing_token_ids_are_errors():
    with pytest.raises(ValueError, match="unknown 'best_of'"):
        build_pairs(judgments(GROUPS), PairingConfig(), "best_of")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['score'\]"):
        build_pairs(judgments(GROUPS).drop_columns(["score"]), PairingConfig(), "best_worst")
    table = judgments({"p1": GROUPS["p1"]})
    table = table.set_column(table.schema.get_field_index("response_token_ids"), "response_token_ids",
                             pa.array([None] * table.num_rows, type=pa.list_(pa.int64())))
    with pytest.raises(ValueError, match="length_penalty needs response_token_ids; prompt 'p1'"):
        build_pairs(table, PairingConfig(length_penalty=0.1), "best_worst")
    pairs, _ = build_pairs(table, PairingConfig(), "best_worst")  # no penalty: token ids are optional
    assert pairs.to_pylist()[0]["chosen_token_ids"] is None


def test_default_strategy_comes_from_config():
    pairs, stats = build_pairs(judgments(GROUPS), PairingConfig(strategy="all_pairs"))
    assert stats["strategy"] == "all_pairs" and pairs.num_rows == 6  # 5 from p1 + 1 from p5
