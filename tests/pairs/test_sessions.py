"""SDPO's self-play data loop (selfplay.pairs.sessions) on a real engine: assistant turns sampled one at a
time from the erroneous turn, user turns replayed from the data, a rule judge picking the better session,
and the kept rows read back as multi-turn pairs."""

from __future__ import annotations

import json

import pytest

from selfplay.generate import Sampling, make_engine
from selfplay.pairs.sessions import NegativeSession, judge_sessions, sample_positive
from selfplay.tasks.pairs import PairsTask

RUDE = ("whatever", "tow truck", "angry", "take it or leave it", "not for you", "hard to say", "baking bread")


def rule_judge(history, continuation):
    """A session loses a point for each dismissive phrase in its assistant turns."""
    text = " ".join(m["content"].lower() for m in continuation if m["role"] == "assistant")
    return -float(sum(phrase in text for phrase in RUDE))


@pytest.fixture(scope="module")
def negatives():
    task = PairsTask("docs/examples/multiturn_prefs.jsonl", eval_fraction=0.0, segment_turns=2)
    return [NegativeSession(r["prompt"], r["rejected"], r["id"]) for r in task.rows[:6]]


def test_positive_sessions_sample_each_assistant_turn_after_the_replayed_user_turns(tiny_model_dir, negatives,
                                                                                     tmp_path, one_thread):
    engine = make_engine("hf", tiny_model_dir, max_model_len=512)
    sampling = Sampling(temperature=0.0, max_tokens=24)
    positives = sample_positive(engine, negatives, sampling, segment_turns=2)
    for neg, pos in zip(negatives, positives):
        assert [m["role"] for m in pos] == ["assistant", "user", "assistant"]
        assert pos[1] == next(m for m in neg.continuation if m["role"] == "user")  # replayed from the data
    # turn 2 was conditioned on turn 1 and the replayed user turn: the same greedy call reproduces it
    again = engine.generate([[*neg.history, *pos[:2]] for neg, pos in zip(negatives, positives)], sampling)
    assert [a[0].text for a in again] == [pos[2]["content"] for pos in positives]

    picked = judge_sessions(negatives, positives, rule_judge, segment_turns=2)
    stats = picked.stats
    assert stats["sessions"] == 6 and stats["kept"] + stats["not_better"] + stats["undecided"] + \
        stats["empty_turn"] == 6
    expected = [rule_judge(n.history, p) > rule_judge(n.history, n.continuation[:3])
                for n, p in zip(negatives, positives) if all(m["content"].strip() for m in p)]
    assert stats["kept"] == sum(expected) >= 1
    for row in picked.rows:
        assert row["chosen_score"] > row["rejected_score"]
        assert sum(m["role"] == "assistant" for m in row["rejected"]) == 2  # cut to the segment's length
    path = tmp_path / "selfplay_sessions.jsonl"  # the kept rows: multi-turn pairs the pairs task reads
    path.write_text("".join(json.dumps(r) + "\n" for r in picked.rows))
    table = PairsTask(path, eval_fraction=0.0, segment_turns=2).pairs_table(0)
    assert table.num_rows == len(picked.rows)


def test_a_session_without_the_user_turns_to_replay_is_named(negatives):
    short = NegativeSession(negatives[0].history, negatives[0].continuation[:1], "cut")
    with pytest.raises(ValueError, match=r"negative session 1 \('cut'\): a segment of 2 assistant turns needs 1 "
                                         r"user turn\(s\) to replay, the session has 0"):
        sample_positive(None, [negatives[0], short], Sampling(), segment_turns=2)
