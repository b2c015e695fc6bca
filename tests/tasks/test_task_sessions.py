"""The `sessions` task (SDPO's self-play input): the shipped file splits into negative sessions, every bad row
gets one message naming the file, the row and the column, and the recipe checks name the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from selfplay.config import ConfigError, load_config
from selfplay.tasks.sessions import SessionsTask

SHIPPED = "docs/examples/negative_sessions.jsonl"
HIST = [{"role": "system", "content": "You help neighbours settle small disputes politely."},
        {"role": "user", "content": "My neighbour parks in front of my garage every morning. How do I bring it up?"}]
NEG = [{"role": "assistant", "content": "Just call a tow truck. People like that only learn the hard way."},
       {"role": "user", "content": "That seems harsh. I still have to live next to them."},
       {"role": "assistant", "content": "Fine, then leave an angry note on the car."}]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_shipped_sessions_split_into_negative_sessions_with_their_continuations():
    task = SessionsTask(SHIPPED, segment_turns=2, eval_fraction=0.1, split_seed=0)
    train, held_out = task.train_examples(), task.eval_examples()
    assert len(train) + len(held_out) == 24 and len(held_out) >= 1
    assert not {ex.id for ex in train} & {ex.id for ex in held_out}
    for ex in train:
        assert ex.prompt[-1]["role"] == "user" and ex.meta["rejected"][0]["role"] == "assistant"
        assert sum(m["role"] == "assistant" for m in ex.meta["rejected"]) >= 2
    first = json.loads(Path(SHIPPED).read_text().splitlines()[0])
    assert task.sessions[0].prompt == first["prompt"] and task.sessions[0].meta["rejected"] == first["rejected"]
    assert held_out[0].reference is None and not held_out[0].meta  # evaluation answers the history alone


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": HIST, "rejected": NEG[:1]},
     r"row 1: column 'rejected': a segment longer than the session: train.loss.segment_turns=2, but the negative "
     r"continuation has 1 assistant turn\(s\)"),
    ({"prompt": [*HIST, NEG[0]], "rejected": NEG[1:]},
     r"row 1: column 'prompt': roles out of order: the history must end with the user turn the erroneous reply "
     r"answers, got 'assistant' last"),
    ({"prompt": HIST[:1] + [{"role": "user", "content": "a"}], "rejected": [NEG[1], *NEG]},
     r"row 1: column 'rejected': roles out of order: the negative continuation must open with the erroneous "
     r"assistant turn, got 'user'"),
    ({"prompt": HIST, "rejected": [NEG[0], NEG[2], NEG[1], NEG[2]]},
     r"row 1: column 'rejected': roles out of order: messages 0 and 1 are both 'assistant' turns"),
    ({"prompt": [HIST[1], HIST[1]], "rejected": NEG},
     r"row 1: column 'prompt': roles out of order: messages 0 and 1 are both 'user' turns"),
    ({"prompt": HIST, "rejected": [NEG[0], HIST[0], *NEG[1:]]},
     r"row 1: column 'rejected': roles out of order: message 1 is a system message inside the session"),
    ({"prompt": HIST, "rejected": [NEG[0], NEG[1], {"role": "assistant", "content": " "}]},
     r"row 1: column 'rejected': message 2 is an empty assistant turn"),
    ({"prompt": HIST, "chosen": NEG}, r"row 1: column 'rejected' is missing"),
    ({"prompt": HIST, "rejected": "just a reply"}, r"row 1: column 'rejected': expected a non-empty list of chat"),
])
def test_a_bad_session_row_gets_one_message_naming_it(tmp_path, row, message):
    path = _write(tmp_path / "negatives.jsonl", [{"prompt": HIST, "rejected": NEG}, row])
    with pytest.raises(ValueError, match=rf"negatives.jsonl: {message}"):
        SessionsTask(path, segment_turns=2)


RECIPE = yaml.safe_load(Path("recipes/sdpo_selfplay.yaml").read_text())


def _broken(path: str, value):
    cfg = copy.deepcopy(RECIPE)
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last)
    else:
        node[last] = value
    return cfg


@pytest.mark.parametrize(("path", "value", "message"), [
    ("train.loss.segment_turns", None, "train.loss.segment_turns: a `sessions` task plays segments"),
    ("judge", None, "judge: a `sessions` task needs a judge to pick the better session"),
    ("judge", {"type": "verifier"}, "judge.type: a `sessions` task compares whole sessions and has no verifier"),
    ("judge", {"type": "sft"}, "judge.type: a `sessions` task compares whole sessions and has no reference answers"),
    ("pairing", {"strategy": "all_pairs"}, "pairing.strategy: a `sessions` task pairs each session's best played"),
    ("pairing", {"drop_ties": False}, "pairing.drop_ties: a `sessions` task pairs"),
    ("generation.prompt_template", "Q: {prompt}", "generation.prompt_template: a `sessions` task plays chat sessions"),
    ("policy", {"preset": "nano", "tokenizer": "char", "warmstart": {}},
     "policy.warmstart: a `sessions` task has no reference answers"),
])
def test_session_play_recipe_errors_name_the_field(path, value, message):
    assert load_config(RECIPE).task.type == "sessions"  # the shipped recipe itself is valid
    with pytest.raises(ConfigError) as info:
        load_config(_broken(path, value))
    assert message in str(info.value)


def _long_segment_config(tmp_path, long_prompts: str, user_chars: int):
    """The shipped recipe on one file whose second session replays a user turn of ``user_chars`` characters."""
    rows = [
        {"prompt": [*HIST[:1], {"role": "user", "content": f"case {i}: " + HIST[1]["content"]}], "rejected": NEG}
        for i in range(12)]
    long_user = {"role": "user", "content": "why? " * (user_chars // 5)}
    rows[1] = {"prompt": rows[1]["prompt"], "rejected": [NEG[0], long_user, NEG[2]]}
    path = _write(tmp_path / "negatives.jsonl", rows)
    cfg = copy.deepcopy(RECIPE)
    cfg["task"] = {"type": "sessions", "path": str(path), "eval_fraction": 0.0}
    cfg["generation"]["long_prompts"] = long_prompts
    cfg["evaluation"] = {"num_prompts": 0}
    return load_config(cfg)


@pytest.mark.parametrize("long_prompts", ["error", "drop", "truncate"])
def test_a_session_whose_later_turn_outgrows_the_context_is_caught_before_the_run(tmp_path, long_prompts):
    """Each history fits, but the second session's turn-1 prompt (history + played turn of up to max_tokens +
    the long replayed user turn) cannot: preflight counts it, and long_prompts decides what happens."""
    from selfplay.loop.factory import build_task_from_config as build_task
    from selfplay.loop.inputs import check_prompt_lengths

    cfg = _long_segment_config(tmp_path, long_prompts, user_chars=300)
    task = build_task(cfg)
    limit = cfg.generation.max_prompt_tokens
    assert all(len(str(ex.prompt)) < limit for ex in task.train_examples())  # no history is long by itself
    fitted, problems, warnings = check_prompt_lengths(cfg, task)
    if long_prompts == "error":
        assert len(problems) == 1 and "1 prompt(s) too long" in problems[0]
        assert "at its last turn (the history, 1 replayed user turn(s)" in problems[0]
        assert "lower train.loss.segment_turns" in problems[0]
        return
    assert not problems and "1 prompt(s) too long" in warnings[0]
    kept = fitted.train_examples()
    if long_prompts == "drop":
        assert len(kept) == len(task.train_examples()) - 1
    else:
        assert len(kept) == len(task.train_examples())
    for ex in kept:  # every kept session's last prompt now fits, counted the way the engine will see it
        assert fitted.length(ex.prompt) + fitted.extra(ex) <= limit

    short = _long_segment_config(tmp_path, "error", user_chars=20)
    assert check_prompt_lengths(short, build_task(short))[1] == []  # the same file with a short user turn fits
