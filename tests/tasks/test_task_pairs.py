"""Offline preference data (offline DPO): rows validated with file/row/column named, prompts held out,
pairs in the pairs-table contract."""

from __future__ import annotations

import json

import pytest

from selfplay.records import PAIRS_SCHEMA
from selfplay.tasks.base import NoVerifierError
from selfplay.tasks.pairs import PairsTask


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pairs_task_splits_prompts_and_emits_the_pairs_contract(tmp_path):
    rows = [{"q": f"{i}+1=", "good": str(i + 1), "bad": str(i + 2)} for i in range(20)]
    rows[3]["q"] = [{"role": "user", "content": "3+1="}]  # chat-message prompts too
    task = PairsTask(_write(tmp_path / "prefs.jsonl", rows), prompt_column="q", chosen_column="good",
                     rejected_column="bad", eval_fraction=0.1, split_seed=0)
    train, held_out = task.train_examples(), task.eval_examples()
    assert len(held_out) == 2 and len(train) == 18
    assert not {e.id for e in train} & {e.id for e in held_out}
    table = task.pairs_table(iteration=0)
    assert table.schema == PAIRS_SCHEMA and table.num_rows == 18
    assert set(table.column("prompt_id").to_pylist()) == {e.id for e in train}
    first = table.to_pylist()[0]
    assert first["chosen"] == rows[int(first["prompt_id"].rsplit("-", 1)[1])]["good"]
    chat = [r for r in table.to_pylist() if r["prompt_id"] == "prefs-3"]
    held = [e for e in held_out if e.id == "prefs-3"]
    assert len(chat) + len(held) == 1  # the chat prompt is either trained on or held out, never both
    if chat:  # in the table its messages are JSON-encoded, like every other table's prompt column
        assert json.loads(chat[0]["prompt"]) == rows[3]["q"]
    else:
        assert held[0].prompt == rows[3]["q"]
    with pytest.raises(NoVerifierError):
        task.score(train[0], "4")


@pytest.mark.parametrize(("bad", "message"), [
    ({"prompt": "1+1=", "chosen": "2"}, r"row 1: column 'rejected' is missing"),
    ({"prompt": "", "chosen": "2", "rejected": "3"}, r"row 1: column 'prompt': empty prompt"),
    ({"prompt": "1+1=", "chosen": "", "rejected": "3"}, r"row 1: column 'chosen' must be a non-empty string"),
])
def test_malformed_rows_name_file_row_and_column(tmp_path, bad, message):
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "0+1=", "chosen": "1", "rejected": "2"}, bad])
    with pytest.raises(ValueError, match=message) as info:
        PairsTask(path)
    assert "bad.jsonl" in str(info.value)


def test_sdpo_chunks_hand_each_iteration_its_own_part_in_file_order(tmp_path):
    rows = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(23)]
    path = _write(tmp_path / "prefs.jsonl", rows)
    whole = PairsTask(path, eval_fraction=0.1, split_seed=1)
    task = PairsTask(path, eval_fraction=0.1, split_seed=1, chunks=3)
    parts = [task.pairs_table(iteration=k).column("prompt_id").to_pylist() for k in range(3)]
    everything = whole.pairs_table(iteration=0).column("prompt_id").to_pylist()
    assert [len(p) for p in parts] == [7, 7, 7]  # 21 training pairs after 2 are held out
    assert sum(parts, []) == everything  # disjoint, complete, in file order
    assert whole.pairs_table(iteration=2).num_rows == 21  # without chunks every iteration gets all
    with pytest.raises(ValueError, match="iteration 3 has no sDPO chunk"):
        task.pairs_table(iteration=3)
    with pytest.raises(ValueError, match="21 training pairs cannot make task.chunks=40"):
        PairsTask(path, eval_fraction=0.1, split_seed=1, chunks=40).pairs_table(iteration=0)


# --- TRL's conversational layouts (selfplay.tasks.formats)
SYSTEM = {"role": "system", "content": "Be concise."}


def _conversational_rows():
    """Three layouts of the same kind of data: explicit prompt with message completions, implicit prompt
    (UltraFeedback-binarized: whole conversations, no prompt column), and multi-turn prompts."""
    explicit, implicit = [], []
    for i in range(12):
        turns = [SYSTEM, {"role": "user", "content": f"What is {i}+1?"}]
        if i % 3 == 0:  # multi-turn: an earlier exchange before the question
            turns = [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                     turns[1]]
        good, bad = {"role": "assistant", "content": str(i + 1)}, {"role": "assistant", "content": "no idea"}
        explicit.append({"prompt": turns, "chosen": [good], "rejected": [bad]})
        implicit.append({"chosen": [*turns, good], "rejected": [*turns, bad], "score_chosen": 9.0})
    return explicit, implicit


@pytest.mark.parametrize("layout", ["explicit", "implicit"])
def test_conversational_layouts_give_message_prompts_and_text_completions(tmp_path, layout):
    explicit, implicit = _conversational_rows()
    rows = explicit if layout == "explicit" else implicit
    path = _write(tmp_path / f"{layout}.jsonl", rows)
    task = PairsTask(path, eval_fraction=0.25, split_seed=1)
    table = task.pairs_table()
    held = task.eval_examples()
    assert table.num_rows + len(held) == 12
    for rec in table.to_pylist():
        i = int(rec["prompt_id"].rsplit("-", 1)[1])
        assert json.loads(rec["prompt"]) == explicit[i]["prompt"]  # the implicit prompt is the shared prefix
        assert rec["chosen"] == str(i + 1) and rec["rejected"] == "no idea"
    multi = [json.loads(r["prompt"]) for r in table.to_pylist() if len(json.loads(r["prompt"])) == 4]
    assert multi and all(m[2]["role"] == "assistant" for m in multi)


@pytest.mark.parametrize(("bad", "message"), [
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "c"}]},
     r"row 1: .*must share the messages before their first difference"),
    ({"prompt": [{"role": "user", "content": "a"}],
      "chosen": [{"role": "assistant", "content": "b"}, {"role": "assistant", "content": "more"}],
      "rejected": "c"}, r"row 1: column 'chosen': roles out of order: messages 0 and 1 are both 'assistant'"),
    ({"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "user", "content": "b"}],
      "rejected": "c"}, r"row 1: column 'chosen': a completion must be one assistant message, got roles \['user'\]"),
    ({"prompt": [{"role": "robot", "content": "a"}], "chosen": "b", "rejected": "c"},
     r"row 1: column 'prompt': message 0 must be"),
    ({"chosen": "b", "rejected": "c"}, r"row 1: column 'chosen' \(no 'prompt' column"),
])
def test_malformed_conversational_rows_name_row_and_column(tmp_path, bad, message):
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "0+1=", "chosen": "1", "rejected": "2"}, bad])
    with pytest.raises(ValueError, match=message):
        PairsTask(path)


# --- multi-turn sessions (SDPO)
def _turn(role, text):
    return {"role": role, "content": text}


HIST = [SYSTEM, _turn("user", "My neighbour parks in front of my garage. How do I raise it?")]
GOOD = [_turn("assistant", "Try a friendly chat first."), _turn("user", "And if that fails?"),
        _turn("assistant", "Offer to share the driveway on weekends.")]
BAD = [_turn("assistant", "Call a tow truck."), _turn("user", "That seems harsh."), _turn("assistant", "Whatever.")]


def test_multi_turn_sessions_keep_their_turns_and_share_the_history_in_the_prompt(tmp_path):
    """Whole sessions (the authors' layout), an explicit prompt with continuations, and a session whose
    error comes at its second assistant turn: the shared messages become the prompt in every case."""
    rows = [{"chosen": HIST + GOOD, "rejected": HIST + BAD},
            {"prompt": HIST, "chosen": GOOD, "rejected": BAD},
            {"chosen": HIST + GOOD[:2] + [_turn("assistant", "Agree a time."), _turn("user", "Thanks!"),
                                          _turn("assistant", "Good luck.")],
             "rejected": HIST + GOOD[:2] + BAD[:1]}]
    task = PairsTask(_write(tmp_path / "sessions.jsonl", rows), eval_fraction=0.0, segment_turns=1)
    table = task.pairs_table().to_pylist()
    for rec in table[:2]:
        assert json.loads(rec["prompt"]) == HIST
        assert json.loads(rec["chosen"]) == GOOD and json.loads(rec["rejected"]) == BAD
    late = table[2]
    assert json.loads(late["prompt"]) == HIST + GOOD[:2]  # the first exchange is shared history
    assert len(json.loads(late["chosen"])) == 3 and late["rejected"] == "Call a tow truck."  # one reply: text
    assert task.eval_examples() == [] and task.train_examples()[0].reference == GOOD[0]["content"]


@pytest.mark.parametrize(("bad", "kwargs", "message"), [
    ({"chosen": HIST + GOOD, "rejected": HIST + GOOD}, {}, r"row 1: the 'chosen' and 'rejected' sessions never differ"),
    ({"chosen": HIST + GOOD, "rejected": HIST + GOOD[:1]}, {}, r"row 1: .* sessions differ only in length"),
    ({"prompt": HIST, "chosen": GOOD, "rejected": BAD}, {"segment_turns": 3},
     r"row 1: a segment longer than the session: train.loss.segment_turns=3, but column 'chosen' has 2 assistant"),
    ({"chosen": HIST + [_turn("user", "hm")] + GOOD, "rejected": HIST + BAD}, {},
     r"row 1: roles out of order: 'chosen' and 'rejected' first differ at message 2, which must be an assistant "
     r"turn on both sides \(got 'user' and 'assistant'\)"),
    ({"prompt": HIST, "chosen": [GOOD[0], GOOD[2]], "rejected": BAD}, {},
     r"row 1: column 'chosen': roles out of order: messages 0 and 1 are both 'assistant' turns"),
    ({"prompt": HIST, "chosen": GOOD, "rejected": [BAD[0], SYSTEM, BAD[2]]}, {},
     r"row 1: column 'rejected': roles out of order: message 1 is a system message"),
])
def test_bad_sessions_get_one_message_naming_the_row(tmp_path, bad, kwargs, message):
    good = {"prompt": HIST, "chosen": GOOD + GOOD[1:], "rejected": BAD + BAD[1:]}  # 3 assistant turns each
    with pytest.raises(ValueError, match=message) as info:
        PairsTask(_write(tmp_path / "bad.jsonl", [good, bad]), **kwargs)
    assert "bad.jsonl: row 1" in str(info.value)
