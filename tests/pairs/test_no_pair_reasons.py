"""Why a prompt got no pair, and the hint an iteration without pairs logs: each cause is counted under its
own reason and the hint names the recipe field that cause asks to change (not "tied" for everything)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from selfplay.config.schema import PairingConfig
from selfplay.loop import stages
from selfplay.loop.rundir import write_parquet
from selfplay.pairs import NO_PAIR_REASONS, build_pairs, no_pair_hint
from tests.pairs.test_build_pairs import judgments

# One cause per table; every prompt of a table fails for that cause alone.
CAUSES: dict[str, tuple[dict, str, str]] = {
    # n=1: one sample per prompt, scored; there is nothing to pair it with
    "too_few_samples": ({"p1": [("4", 1.0, 1)], "p2": [("7", 0.0, 1)], "p3": [("9", 0.5, 1)]},
                        "generation.n", "judge"),
    # the judge could not decide (an LLM verdict it could not parse): every score None
    "too_few_scored": ({"p1": [("4", None, 1), ("5", None, 1)], "p2": [("6", None, 1), ("7", None, 2)],
                        "p3": [("8", 0.5, 1), ("9", None, 1)]}, "judge", "generation.n"),
    # the policy ended every sample at once; a verifier scores an empty answer 0 or cannot read it (None)
    "all_empty": ({"p1": [("", 0.0, 0), ("", 0.0, 0)], "p2": [("", None, 0), ("  ", None, 0)],
                   "p3": [("", 0.0, 0), ("", None, 0)]}, "generation.max_tokens", "generation.temperature"),
    # greedy-like sampling: one text every time, whatever its score
    "all_identical": ({"p1": [("12", 0.0, 2), ("12", 0.0, 2)], "p2": [("3", 0.4, 1), ("3", 0.4, 1)],
                       "p3": [("5", 0.2, 1), ("5", 0.2, 1), ("5", 0.2, 1)]}, "generation.temperature",
                      "generation.n"),
    # different texts, one graded score: a genuine tie
    "all_tied": ({"p1": [("a", 0.5, 1), ("b", 0.5, 1)], "p2": [("c", 0.25, 1), ("d", 0.25, 1)],
                  "p3": [("e", 0.75, 1), ("f", 0.75, 1)]}, "pairing.drop_ties", "max_tokens"),
}


@pytest.mark.parametrize("cause", list(CAUSES))
def test_each_cause_is_counted_under_its_own_reason(cause):
    groups, field, _ = CAUSES[cause]
    pairs, stats = build_pairs(judgments(groups), PairingConfig(), "best_worst")
    assert pairs.num_rows == 0 and stats["prompts_without_pair"] == 3
    assert {r: stats[f"no_pair_{r}"] for r in NO_PAIR_REASONS if stats[f"no_pair_{r}"]} == {cause: 3}


@pytest.mark.parametrize("cause", list(CAUSES))
def test_the_hint_names_the_cause_and_the_field_to_change(cause):
    groups, field, other = CAUSES[cause]
    _, stats = build_pairs(judgments(groups), PairingConfig(), "best_worst")
    hint = no_pair_hint(stats)
    assert hint.startswith(f"3 prompts {cause}: ") and field in hint
    assert other not in hint  # the hint of one cause does not send the user to another's field
    assert "tied" not in hint or cause == "all_tied"


def test_unscored_and_empty_are_counted_per_sample():
    _, stats = build_pairs(judgments(CAUSES["too_few_scored"][0]), PairingConfig(), "best_worst")
    assert (stats["samples"], stats["unscored_samples"], stats["empty_responses"]) == (6, 5, 0)
    assert "5 of 6 samples" in no_pair_hint(stats)
    _, stats = build_pairs(judgments(CAUSES["all_empty"][0]), PairingConfig(), "best_worst")
    assert (stats["unscored_samples"], stats["empty_responses"]) == (3, 6)


def test_mixed_causes_are_listed_most_frequent_first():
    groups = {**CAUSES["too_few_scored"][0], "q1": [("x", 0.5, 1)], "q2": [("y", 1.0, 1), ("z", 1.0, 1)]}
    _, stats = build_pairs(judgments(groups), PairingConfig(), "best_worst")
    hint = no_pair_hint(stats)
    assert [part.split(":")[0] for part in hint.split("; ")] == [
        "3 prompts too_few_scored", "1 prompt all_correct", "1 prompt too_few_samples"]


def test_one_sample_suffices_for_the_strategies_that_need_no_second():
    groups = {"p1": [("4", 0.0, 1)], "p2": [("5", None, 1)]}
    _, stats = build_pairs(judgments(groups), PairingConfig(), "best")
    assert (stats["no_pair_too_few_samples"], stats["no_pair_all_wrong"], stats["no_pair_too_few_scored"]) == (0, 1, 1)


def test_no_hint_when_every_prompt_has_a_pair():
    _, stats = build_pairs(judgments({"p1": [("a", 0.0, 1), ("b", 1.0, 1)]}), PairingConfig(), "best_worst")
    assert no_pair_hint(stats) == ""


def test_the_pairs_stage_logs_and_records_the_hint(tmp_path: Path):
    """The stage an iteration runs: an n=1 table is reported as too few samples, with generation.n."""
    write_parquet(tmp_path / "judgments.parquet", judgments(CAUSES["too_few_samples"][0]))
    logged: list[str] = []
    cfg = SimpleNamespace(pairing=PairingConfig(), pairing_strategy="best_worst")
    rt = SimpleNamespace(cfg=cfg, log=logged.append)
    it = stages.Iteration(k=0, dir=tmp_path, policy_in=tmp_path, seed=0)
    info = stages.build_pairs(rt, it).as_dict()  # the pairs stage's record, as stored
    assert info["no_pairs"] is True and info["no_pair_too_few_samples"] == 3
    assert "generation.n" in info["hint"]
    assert len(logged) == 1 and "iteration 0 has no preference pairs" in logged[0]
    assert info["hint"] in logged[0] and "tied" not in logged[0]
