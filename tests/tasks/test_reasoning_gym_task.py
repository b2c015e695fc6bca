"""`task: {type: reasoning_gym}`: problems from reasoning_gym.create_dataset, scores from the dataset's own
score_answer (partial credit kept), held out = unseen, a prompt template for tiny models, and a
score_answer that raises scoring 0 and counted. Built through the recipe schema and the real factory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from selfplay.config import ConfigError, load_config
from selfplay.judges import PromptGroup
from selfplay.judges.rules import VerifierJudge
from selfplay.loop.factory import build_task_from_config
from selfplay.tasks import build_task
from selfplay.tasks.base import prompt_key

ROOT = Path(__file__).parents[2]


def recipe(task: dict, **more) -> dict:
    return {"policy": {"preset": "nano"}, "judge": {"type": "verifier"}, "task": {"type": "reasoning_gym", **task},
            **more}


def test_held_out_problems_are_never_trained_on():
    # 2 one-digit terms: ~200 problems, so train and eval draws collide often (and seed+i generators
    # would share entries between neighbouring seeds)
    cfg = load_config(recipe({"name": "chain_sum", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                             "max_digits": 1}}, evaluation={"num_prompts": 40}))
    task = build_task_from_config(cfg)
    train, held = task.train_examples(), task.eval_examples()
    assert 40 <= len(held) <= 200 and task.dropped_as_eval > 0  # eval_size: max(200, num_prompts)
    assert not {prompt_key(e.prompt) for e in train} & {prompt_key(e.prompt) for e in held}
    assert len({e.id for e in train}) == len(train)  # repeats within a split are kept once
    assert [e.id for e in build_task_from_config(cfg).eval_examples()] == [e.id for e in held]  # stable
    assert task.train_examples(5, seed=1) != task.train_examples(5, seed=2)
    assert all(task.score(e, e.reference) == 1.0 for e in train[:20] + held[:20])


SHORT_ANSWER_TASKS = [
    ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}, "{metadata[expression]}=",
     r"\d+ [+-] \d+="),
    ("spell_backward", {"min_word_len": 3, "max_word_len": 5}, "reverse {metadata[word]}:", r"reverse [A-Za-z]+:"),
    ("count_bits", {"max_n": 255}, "bits {metadata[number]}:", r"bits \d+:"),
]


@pytest.mark.parametrize(("name", "config", "template", "shape"), SHORT_ANSWER_TASKS,
                         ids=[t[0] for t in SHORT_ANSWER_TASKS])
def test_short_answer_tasks_with_a_template(name, config, template, shape):
    task = build_task("reasoning_gym", name=name, config=config, prompt_template=template, train_size=300,
                      eval_size=20, seed=3)
    examples = task.train_examples(50, seed=0)
    assert all(re.fullmatch(shape, e.prompt) for e in examples)  # the instruction is gone
    assert all(len(e.reference) <= 6 for e in examples)
    for e in examples[:10]:
        assert task.score(e, e.reference) == 1.0
        assert task.score(e, f"<answer>{e.reference}</answer>") == 1.0  # extracted first
        assert task.score(e, f"I think {e.reference}.\nThe answer is {e.reference}.") == 1.0
        assert task.score(e, "") == 0.0


def test_partial_credit_is_kept_and_chat_prompts():
    task = build_task("reasoning_gym", name="spell_backward", config={"min_word_len": 6, "max_word_len": 6},
                      train_size=50, eval_size=5, chat=True)
    e = task.train_examples(1, seed=0)[0]
    assert e.prompt[0]["role"] == "user" and e.prompt[0]["content"].startswith("Spell this word backward")
    half = e.reference[:3] + "zzz"
    assert task.score(e, half) == pytest.approx(0.5)  # spell_backward's own credit: 3 of 6 letters


def test_a_score_answer_that_raises_scores_0_and_is_counted():
    task = build_task("reasoning_gym", name="prime_factorization", train_size=20, eval_size=5)
    e = task.train_examples(1, seed=0)[0]
    assert task.score(e, e.reference) == 1.0
    groups = [PromptGroup(e.id, e.prompt, ["2 × two", e.reference, "3 x 5"], e.reference, e.meta)]
    judge = VerifierJudge(task)
    assert judge.score(groups) == [[0.0, 1.0, 0.0]]  # int("two"), int("3 x 5") raise inside score_answer
    assert judge.stats == {"grader_errors": 2, "grader_timeouts": 0}
    assert "ValueError" in task.counts.last_error


def test_configuration_errors_name_the_cause():
    bad_key = r"prompt_template '\{metadata\[expr\]\}=' fails on entry 0: KeyError.*'expression'"
    with pytest.raises(ValueError, match=bad_key):
        build_task("reasoning_gym", name="chain_sum", prompt_template="{metadata[expr]}=", train_size=5, eval_size=5)
    with pytest.raises(ValueError, match="reasoning_gym task 'no_such_task'"):
        build_task("reasoning_gym", name="no_such_task", train_size=5, eval_size=5)
    with pytest.raises(ConfigError, match=r"config.seed: set by the task"):
        load_config(recipe({"name": "chain_sum", "config": {"seed": 3}}))
    with pytest.raises(ConfigError, match="distinct held-out problems of reasoning_gym chain_sum"):
        from selfplay.loop.preflight import preflight

        small = {"name": "chain_sum", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}
        preflight(load_config(recipe(small, evaluation={"num_prompts": 500})), "small.yaml")


def test_the_docs_block_and_the_recipe_build():
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "tasks.md").read_text(), re.S)
    import yaml

    [block] = [b for b in blocks if "reasoning_gym" in b]
    cfg = load_config({"policy": {"preset": "nano"}, **yaml.safe_load(block)})
    task = build_task_from_config(cfg)
    e = task.eval_examples(1, seed=0)[0]
    assert task.score(e, e.reference) == 1.0
    shipped = load_config(ROOT / "recipes" / "reasoning_gym.yaml")
    assert shipped.task.type == "reasoning_gym" and shipped.policy.warmstart is not None
    task = build_task_from_config(shipped)
    assert len(task.eval_examples()) >= shipped.evaluation.num_prompts
    assert len(task.train_examples()) >= shipped.policy.warmstart.examples
