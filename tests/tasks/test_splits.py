"""Held out means unseen: for every task kind, no eval prompt's canonical form occurs in the train split.

Canonical forms are checked independently of the task's own key where one exists: for arithmetic the
commuted twin of every ``a+b=`` / ``a*b=`` eval problem is looked for in the train text, for sorting every
ordering of an eval list, for prompt files the text with case and whitespace changed.
"""

from __future__ import annotations

import json

import pytest

from selfplay.tasks import ArithmeticTask, DatasetTask, SortingTask
from selfplay.tasks.arithmetic import level_space_size
from selfplay.tasks.base import held_out_keys, prompt_key
from selfplay.tasks.pairs import PairsTask


def _commuted(text: str) -> str | None:
    for op in "+*":
        if op in text:
            a, b = text.rstrip("=").split(op)
            return f"{b}{op}{a}="
    return None


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5, 6])
def test_arithmetic_eval_problems_and_their_commuted_twins_are_never_trained(level):
    task = ArithmeticTask(level=level)
    n_train = 4000 if level > 1 else 3000  # level 1 has 5050 problems in all, ~4545 of them train
    train = {e.prompt for e in task.train_examples(n_train, seed=0)}
    evals = task.eval_examples(400, seed=0)
    assert not train & {e.prompt for e in evals}
    twins = [_commuted(e.prompt) for e in evals]
    assert not train & {t for t in twins if t is not None}
    # The twin pair really is one problem: same id and same split for both orders.
    assert {e.meta["key"] for e in evals} & {e.meta["key"] for e in task.train_examples(n_train, seed=0)} == set()


def test_arithmetic_commuted_twins_share_key_and_id():
    import random

    task = ArithmeticTask(level=1)
    keys = {}
    rng = random.Random(0)
    for _ in range(20_000):
        p = task.sample(rng)
        twin = _commuted(p.text)
        keys.setdefault(p.key, set()).add(p.text)
        if twin is not None and twin != p.text:
            assert p.key == f"{min(p.meta['a'], p.meta['b'])}+{max(p.meta['a'], p.meta['b'])}"
    assert any(len(texts) == 2 for texts in keys.values())  # both orders were drawn for some problem


def test_arithmetic_space_sizes_count_each_problem_once():
    # level 1: unordered pairs from 0..99 = 100*101/2; level 2: + and - (a >= b) over 10..99 = 2 * 90*91/2
    assert level_space_size(1) == 5050
    assert level_space_size(2) == 8190
    # level 3: + unordered over 100..999 (900*901/2), - ordered (negatives allowed, 900*900)
    assert level_space_size(3) == 900 * 901 // 2 + 900 * 900
    assert ArithmeticTask(level=3).space_size == level_space_size(3)


def test_sorting_space_size_counts_multisets():
    assert SortingTask(min_len=2, max_len=3, max_value=9).space_size == 55 + 220  # C(11,2) + C(12,3)
    assert SortingTask(min_len=2, max_len=4, max_value=99).space_size == 5050 + 171700 + 4421275


def test_sorting_eval_lists_in_any_order_are_never_trained():
    task = SortingTask(min_len=2, max_len=3, max_value=9)  # a small space, so permutations collide often
    train = task.train_examples(200, seed=0)  # of ~247 train multisets
    evals = task.eval_examples(20, seed=0)
    train_multisets = {tuple(sorted(e.meta["values"])) for e in train}
    assert not train_multisets & {tuple(sorted(e.meta["values"])) for e in evals}


def test_dataset_split_is_by_normalised_prompt(tmp_path):
    rows = []
    for i in range(40):  # every prompt three times, in three surface forms
        rows += [{"prompt": f"What is {i}?"}, {"prompt": f"  what IS   {i}? "}, {"prompt": f"What is {i}?\n"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = DatasetTask(path, eval_fraction=0.1, split_seed=3)
    train_keys = {prompt_key(e.prompt) for e in task.train_examples()}
    eval_keys = [prompt_key(e.prompt) for e in task.eval_examples()]
    assert len(eval_keys) == len(set(eval_keys)) == 4  # 10% of 40 distinct prompts, each once
    assert not train_keys & set(eval_keys)
    assert len(task.train_examples()) == 36 * 3


def test_dataset_rows_that_repeat_a_separate_eval_file_are_dropped(tmp_path):
    train = tmp_path / "train.jsonl"
    evals = tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Q{i}"}) + "\n" for i in range(10)))
    evals.write_text(json.dumps({"prompt": "q3"}) + "\n" + json.dumps({"prompt": "new one"}) + "\n")
    with pytest.warns(UserWarning, match="1 training rows repeat an eval prompt"):
        task = DatasetTask(train, eval_path=evals)
    assert task.dropped_as_eval == 1
    assert "q3" not in {prompt_key(e.prompt) for e in task.train_examples()}


def test_dataset_chat_prompts_split_by_normalised_messages(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"Hi {i % 12}"}]} for i in range(48)]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = DatasetTask(path, eval_fraction=0.25)
    train_keys = {prompt_key(e.prompt) for e in task.train_examples()}
    eval_keys = {prompt_key(e.prompt) for e in task.eval_examples()}
    assert len(eval_keys) == 3 and not train_keys & eval_keys


def test_pairs_hold_out_prompts_not_rows(tmp_path):
    rows = [{"prompt": f"Prompt {i}", "chosen": f"good {i}.{j}", "rejected": f"bad {i}.{j}"}
            for i in range(100) for j in range(4)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = PairsTask(path, eval_fraction=0.18, split_seed=0)
    eval_keys = [prompt_key(e.prompt) for e in task.eval_examples()]
    assert len(eval_keys) == len(set(eval_keys)) == 18
    trained = {prompt_key(json.loads(p) if p.startswith("[") else p)
               for p in task.pairs_table(0).column("prompt").to_pylist()}
    assert not trained & set(eval_keys)
    assert task.pairs_table(0).num_rows == 82 * 4


def test_held_out_keys_is_seeded_and_never_takes_everything():
    keys = [f"k{i}" for i in range(10)] * 2
    assert len(held_out_keys(keys, 0.3, 1)) == 3
    assert held_out_keys(keys, 0.3, 1) == held_out_keys(keys, 0.3, 1)
    assert len(held_out_keys(["a", "b"], 0.99, 0)) == 1
    assert held_out_keys(["a", "a"], 0.5, 0) == set()
    assert held_out_keys(keys, 0.0, 0) == set()


def test_word_problem_eval_problems_are_never_trained_under_another_wording():
    from selfplay.tasks.word_problems import WordProblemTask

    task = WordProblemTask()
    train = task.train_examples(2000, seed=0)
    evals = task.eval_examples(200, seed=0)
    # The key is the template and its numbers: a held-out problem retold with another name or filler
    # sentence is the same problem, and must not be in training.
    assert not {e.meta["key"] for e in train} & {e.meta["key"] for e in evals}
    train_texts = {e.prompt[-1]["content"] if isinstance(e.prompt, list) else e.prompt for e in train}
    assert not train_texts & {e.prompt[-1]["content"] if isinstance(e.prompt, list) else e.prompt for e in evals}
