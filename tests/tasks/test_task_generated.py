"""Synthetic tasks: seeded reproducibility, disjoint splits, difficulty levels, verifiers."""

from __future__ import annotations

import re

import pytest

from selfplay.tasks import LEVELS, ArithmeticTask, Example, SortingTask, Task, build_task
from selfplay.tasks.arithmetic import digit_credit, parse_leading_int
from selfplay.tasks.sorting import parse_int_list

TASKS = [lambda: ArithmeticTask(level=1), lambda: ArithmeticTask(level=4), lambda: SortingTask()]
TASK_IDS = ["arithmetic1", "arithmetic4", "sorting"]


@pytest.mark.parametrize("make", TASKS, ids=TASK_IDS)
def test_seeded_reproducible_and_stable_ids(make):
    task = make()
    assert isinstance(task, Task) and task.has_verifier
    a, b = task.train_examples(50, seed=3), make().train_examples(50, seed=3)
    assert a == b
    assert task.train_examples(50, seed=4) != a
    assert len({e.id for e in a}) == 50  # distinct within a call
    # the same problem gets the same id whatever call produced it
    by_prompt = {e.prompt: e.id for e in task.train_examples(300, seed=5)}
    assert all(by_prompt[e.prompt] == e.id for e in a if e.prompt in by_prompt)


@pytest.mark.parametrize("make", TASKS, ids=TASK_IDS)
def test_train_and_eval_are_disjoint_for_any_seeds(make):
    task = make()
    evals = {e.prompt for s in range(3) for e in task.eval_examples(100, seed=s)}
    trains = {e.prompt for s in range(3) for e in task.train_examples(300, seed=s)}
    assert evals and trains and not evals & trains
    eval_ids = {e.id for e in task.eval_examples(100, seed=0)}
    assert not eval_ids & {e.id for e in task.train_examples(300, seed=0)}


def test_default_sizes_and_too_small_space():
    task = ArithmeticTask(level=1, train_size=30, eval_size=7)
    assert len(task.train_examples()) == 30 and len(task.eval_examples()) == 7
    tiny_space = SortingTask(min_len=1, max_len=1, max_value=9)  # only 10 distinct problems
    with pytest.raises(ValueError, match="found only"):
        tiny_space.train_examples(50)


def _digits(n: int) -> int:
    return len(str(abs(n)))


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_levels_produce_the_stated_digit_counts(level):
    forms, negative_ok = LEVELS[level]
    seen_ops = set()
    for ex in ArithmeticTask(level=level).train_examples(200, seed=0):
        m = re.fullmatch(r"(\d+)([+\-*])(\d+)=", ex.prompt)
        assert m, ex.prompt
        a, op, b = int(m[1]), m[2], int(m[3])
        seen_ops.add(op)
        (da_lo, da_hi), (db_lo, db_hi) = next((da, db) for o, da, db in forms if o == op)
        assert da_lo <= _digits(a) <= da_hi and db_lo <= _digits(b) <= db_hi, ex.prompt
        assert int(ex.reference) == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert negative_ok or int(ex.reference) >= 0
    assert seen_ops == {o for o, _, _ in forms}


def test_arithmetic_verifier():
    task = ArithmeticTask(level=3)
    ex = Example("x", "37+48=", "85")
    for response, want in [("85", 1.0), (" 85\n", 1.0), ("85</s>", 1.0), ("85 because 37+48", 1.0),
                           ("+85", 1.0), ("84", 0.0), ("", 0.0), ("answer: 85", 0.0), ("\n\n85", 1.0),
                           ("8\n5", 0.0), ("-85", 0.0), ("850", 0.0)]:
        assert task.score(ex, response) == want, response
    neg = Example("y", "100-250=", "-150")
    assert task.score(neg, "-150") == 1.0 and task.score(neg, "150") == 0.0
    assert parse_leading_int("  -12abc") == -12 and parse_leading_int("abc") is None


def test_arithmetic_partial_credit():
    task = ArithmeticTask(level=3, partial_credit=True)
    ex = Example("x", "37+48=", "85")
    assert task.score(ex, "85") == 1.0
    assert task.score(ex, "84") == 0.5  # tens digit right, units wrong
    assert task.score(ex, "185") == pytest.approx(2 / 3)  # extra leading digit costs one position
    assert task.score(ex, "nope") == 0.0
    assert digit_credit(-150, 150) == pytest.approx(3 / 4)  # digits right, sign wrong


def test_sorting_task_and_verifier():
    task = SortingTask(min_len=4, max_len=4, max_value=50)
    ex = task.train_examples(1, seed=0)[0]
    values = [int(v) for v in ex.prompt.removeprefix("sort:").removesuffix("=").split(",")]
    assert len(values) == 4 and ex.reference == ",".join(map(str, sorted(values)))
    ex = Example("s", "sort:3,1,2=", "1,2,3")
    for response, want in [("1,2,3", 1.0), (" 1, 2, 3\nmore", 1.0), ("[1 2 3]", 1.0), ("1,3,2", 0.0),
                           ("1,2", 0.0), ("", 0.0)]:
        assert task.score(ex, response) == want, response
    graded = SortingTask(partial_credit=True)
    assert graded.score(ex, "1,3,2") == pytest.approx(1 / 3)
    assert graded.score(ex, "1,2") == pytest.approx(2 / 3)
    assert graded.score(ex, "1,2,3,4") == pytest.approx(3 / 4)
    assert parse_int_list("x") == []
    desc = SortingTask(descending=True).train_examples(1, seed=0)[0]
    assert desc.prompt.startswith("rsort:")
    assert parse_int_list(desc.reference) == sorted(parse_int_list(desc.reference), reverse=True)


def test_chat_prompts_and_factory_kwargs():
    ex = build_task("arithmetic", level=2, chat=True).train_examples(1, seed=0)[0]
    text = f"{ex.meta['a']}{ex.meta['op']}{ex.meta['b']}="
    assert ex.prompt == [{"role": "user", "content": text}]
    assert ex.id == build_task("arithmetic", level=2).train_examples(1, seed=0)[0].id  # chat or not
    assert isinstance(build_task("sorting", max_len=4), SortingTask)
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['levle'\]; accepted: \['level'"):
        build_task("arithmetic", levle=2)
    with pytest.raises(ValueError, match="arithmetic level must be one of"):
        build_task("arithmetic", level=9)
    with pytest.raises(ValueError, match="unknown task kind 'chess'"):
        build_task("chess")
