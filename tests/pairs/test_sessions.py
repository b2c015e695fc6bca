"""SDPO's self-play data loop (selfplay.pairs.sessions): assistant turns played one at a time from the erroneous
turn on a real engine, user turns replayed from the data; the run's judge interface scoring each session's
played and negative continuations as one group; one pair per session, with every dropped session counted."""

from __future__ import annotations

import json

import pytest

from docs.examples.session_judge import DismissiveJudge
from selfplay.generate import Sampling, make_engine
from selfplay.pairs.sessions import (
    JudgedSession,
    NegativeSession,
    judge_sessions,
    play_sessions,
    session_hint,
    session_pairs,
)
from selfplay.tasks.pairs import PairsTask
from selfplay.tasks.sessions import SessionsTask


@pytest.fixture(scope="module")
def negatives():
    task = SessionsTask("docs/examples/negative_sessions.jsonl", segment_turns=2, eval_fraction=0.0)
    return [NegativeSession(ex.prompt, ex.meta["rejected"], ex.id) for ex in task.train_examples()[:6]]


def test_played_sessions_sample_each_assistant_turn_after_the_replayed_user_turns(tiny_model_dir, negatives,
                                                                                   tmp_path, one_thread):
    engine = make_engine("hf", tiny_model_dir, max_model_len=512)
    greedy = Sampling(temperature=0.0, max_tokens=24)
    played = play_sessions(engine, negatives, greedy, segment_turns=2)
    for neg, sessions in zip(negatives, played):
        (pos,) = sessions
        assert [m["role"] for m in pos] == ["assistant", "user", "assistant"]
        assert pos[1] == neg.continuation[1]  # replayed from the data
    # turn 2 was conditioned on turn 1 and the replayed user turn: the same greedy call reproduces it
    again = engine.generate([[*neg.history, *s[0][:2]] for neg, s in zip(negatives, played)], greedy)
    assert [a[0].text for a in again] == [s[0][2]["content"] for s in played]

    sampled = play_sessions(engine, negatives[:2], Sampling(n=3, temperature=1.0, max_tokens=24, seed=5), 2)
    assert [len(s) for s in sampled] == [3, 3]  # n sessions each, every one continued on its own
    assert len({s[0]["content"] for s in sampled[0]}) > 1

    judged = judge_sessions(negatives, played, DismissiveJudge(), segment_turns=2)
    made = session_pairs(judged, "dismissive", iteration=0)
    stats = made.stats
    assert stats["sessions"] == 6 and sum(stats[k] for k in ("kept", "not_better", "undecided", "empty_turn",
                                                             "same_first_turn")) == 6
    assert stats["kept"] == len(made.rows) >= 1  # every shipped negative opens with a dismissive phrase
    for row in made.rows:
        assert row["chosen_score"] > row["rejected_score"]
        assert sum(m["role"] == "assistant" for m in json.loads(row["rejected"])) == 2  # cut to the segment
    path = tmp_path / "played.jsonl"  # the kept rows are multi-turn pairs the pairs task reads and checks
    path.write_text("".join(json.dumps({k: json.loads(r[k]) for k in ("prompt", "chosen", "rejected")}) + "\n"
                            for r in made.rows))
    assert PairsTask(path, eval_fraction=0.0, segment_turns=2).pairs_table(0).num_rows == len(made.rows)


def test_a_session_without_the_user_turns_to_replay_is_named(negatives):
    short = NegativeSession(negatives[0].history, negatives[0].continuation[:1], "cut")
    with pytest.raises(ValueError, match=r"negative session 1 \('cut'\): a segment of 2 assistant turns needs 1 "
                                         r"user turn\(s\) to replay, the session has 0"):
        play_sessions(None, [negatives[0], short], Sampling(), segment_turns=2)


class _Recorder:
    """The rule judge, keeping the groups it was shown."""

    name = "recorder"

    def __init__(self):
        self.groups = []

    def score(self, groups):
        self.groups = groups
        return DismissiveJudge().score(groups)


def _turns(*texts):
    return [{"role": "assistant" if i % 2 == 0 else "user", "content": t} for i, t in enumerate(texts)]


def test_one_group_per_session_holds_the_played_continuations_then_the_negative_cut_to_the_segment():
    neg = NegativeSession([{"role": "user", "content": "My flatmate never cleans. What do I say?"}],
                          _turns("Hard to say.", "Please help.", "Whatever works for you.", "Thanks.", "Bye."), "s0")
    good = _turns("Ask for a short chat and agree a rota.", "Please help.", "Offer to swap the first week.")
    empty = _turns("", "Please help.", "ok")
    judge = _Recorder()
    (judged,) = judge_sessions([neg], [[good, empty]], judge, segment_turns=2)
    (group,) = judge.groups
    assert group.prompt == neg.history and group.meta["sessions"] == [good, neg.continuation[:3]]
    assert group.responses[1] == "assistant: Hard to say.\nuser: Please help.\nassistant: Whatever works for you."
    assert judged.played_scores == [0.0, None] and judged.negative_score == -2.0  # the empty one is not shown


@pytest.mark.parametrize(("scores", "negative", "min_margin", "outcome"), [
    ([-1.0, 0.5], -2.0, 0.0, ("kept", 1, 0.5)),  # the best played session is the chosen side
    ([-2.0, -3.0], -2.0, 0.0, ("not_better", None, None)),  # a tie is no preference
    ([-1.0, None], -2.0, 1.5, ("not_better", None, None)),  # below pairing.min_margin
    ([None, None], -2.0, 0.0, ("undecided", None, None)),
    ([0.0, 0.0], None, 0.0, ("undecided", None, None)),
])
def test_a_session_makes_one_pair_at_most_and_a_dropped_one_is_counted(scores, negative, min_margin, outcome):
    neg = NegativeSession([{"role": "user", "content": "Hi"}], _turns("Whatever.", "Hm?", "Whatever."), "s7")
    played = [_turns("Hello, how can I help?", "Hm?", "Tell me more."), _turns("Hi there!", "Hm?", "Go on.")]
    judged = JudgedSession(neg, played, scores, neg.continuation, negative)
    made = session_pairs([judged], "rule", iteration=3, min_margin=min_margin)
    reason, index, score = outcome
    assert made.stats[reason] == 1 and made.stats["played"] == 2
    if index is None:
        assert made.rows == [] and session_hint(made.stats).startswith(f"1 session {reason}: ")
        return
    (row,) = made.rows
    assert json.loads(row["chosen"]) == played[index] and json.loads(row["rejected"]) == neg.continuation
    assert (row["pair_id"], row["chosen_score"], row["margin"], row["iteration"]) == ("3:s7:1:negative", score,
                                                                                        score - negative, 3)


def test_a_played_first_turn_equal_to_the_erroneous_one_makes_no_pair():
    neg = NegativeSession([{"role": "user", "content": "Hi"}], _turns("Whatever.", "Hm?", "Whatever."), "s8")
    same = _turns("Whatever.", "Hm?", "Hello!")  # the sessions would first differ at the second turn
    made = session_pairs([JudgedSession(neg, [same], [1.0], neg.continuation, -2.0)], "rule", iteration=0)
    assert made.rows == [] and made.stats["same_first_turn"] == 1


def test_the_pairs_stage_of_a_run_writes_the_kept_pairs_or_says_why_there_are_none(tmp_path):
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from selfplay.config import load_config
    from selfplay.loop import session_play
    from selfplay.loop.rundir import write_parquet
    from selfplay.loop.stages.context import Iteration
    from selfplay.records import encode_prompt

    logged: list[str] = []
    rt = SimpleNamespace(cfg=load_config("recipes/sdpo_selfplay.yaml"), rd=None, log=logged.append)
    it = Iteration(0, tmp_path, tmp_path / "policy_in", 0)
    neg = _turns("Whatever.", "Hm?", "Whatever.")
    played = [_turns("Hello, how can I help?", "Hm?", "Tell me more.")]
    for scores, negative, kept in (([0.0], -2.0, 1), ([-3.0], -2.0, 0)):
        row = {"session_id": "s1", "prompt": encode_prompt([{"role": "user", "content": "Hi"}]),
               "negative": encode_prompt(neg), "played": [encode_prompt(p) for p in played], "played_scores": scores,
               "negative_segment": encode_prompt(neg), "negative_score": negative, "judge": "rule"}
        write_parquet(tmp_path / "session_judgments.parquet",
                      pa.Table.from_pylist([row], schema=session_play.JUDGED_SCHEMA))
        record = session_play.pairs(rt, it)
        table = pq.read_table(tmp_path / "pairs.parquet").to_pylist()
        assert len(table) == record.pairs == kept
    assert record.no_pairs and record.hint.startswith("1 session not_better: no played session scored above")
    assert "iteration 0 has no preference pairs" in logged[-1]
    assert logged[-1].endswith(record.hint)  # the log gives the same reason as the record, not "no prompts"
