"""A user's jsonl of `{question, answer}` rows runs with `judge: verifier` and no Python: in GSM8K's
`#### 42` style (graded `numeric`) and in a `\\boxed{}` style (graded `math`), built by the real task
builder from the recipe blocks docs/data.md shows, and graded right on hand-labelled responses.
A reference the grader cannot read fails at load naming file and row; grader failures reach the
judge stage's stats."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from selfplay.config import ConfigError, load_config
from selfplay.judges import judge_table
from selfplay.judges.rules import VerifierJudge
from selfplay.loop.factory import build_task_from_config
from selfplay.loop.preflight import preflight

ROOT = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the docs' recipes name their data files relative to the repository


def doc_recipe(page: str, data_file: str) -> dict:
    """The YAML block of ``docs/{page}`` that names ``data_file``, parsed (the docs' example, executed)."""
    import yaml

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)
    [block] = [b for b in blocks if data_file in b]
    return {"policy": {"preset": "nano"}, **yaml.safe_load(block)}


def by_row(task, split: str = "train") -> dict[int, object]:
    examples = task.train_examples() if split == "train" else task.eval_examples()
    return {e.meta["row"]: e for e in examples}


# GSM8K style (docs/examples/gsm8k_style.jsonl): row -> [(response, right?)] labelled by hand
GSM8K_LABELS = {
    0: [("Half of 48 is 24, so 72 muffins, and 72 * 3 = 216.\n#### 216", True), ("The answer is $216.", True),
        ("#### 216.00", True), ("They sold 72 muffins.", False), ("#### 72", False)],
    3: [("#### 1.25", True), ("Her change is $1.25.", True), ("5/4", True), ("#### 8.75", False), ("", False)],
    7: [("So 1,800 liters are left.\n#### 1,800", True), ("1800", True), ("#### 700", False)],
}
# \boxed{} style (docs/examples/boxed_style.jsonl)
BOXED_LABELS = {
    0: [(r"So it is $\boxed{\frac{1}{2}}$.", True), (r"\boxed{0.5}", True), ("The answer is 1/2", True),
        (r"\boxed{\frac{2}{4}}", True), (r"\boxed{\frac{1}{4}}", False)],
    2: [(r"$\boxed{5\sqrt{2}}$", True), (r"\boxed{\sqrt{50}}", True), (r"\boxed{7.07}", False)],
    3: [(r"\boxed{\frac{3}{2}}", True), (r"\boxed{1.5}", True), (r"\boxed{3/2}", True), (r"\boxed{2}", False)],
    7: [(r"\boxed{x+1}", True), (r"\boxed{1+x}", True), (r"\boxed{x-1}", False)],
}


@pytest.mark.parametrize(("data_file", "grader", "labels"), [("gsm8k_style.jsonl", "numeric", GSM8K_LABELS),
                                                            ("boxed_style.jsonl", "math", BOXED_LABELS)])
def test_a_users_file_is_graded_with_no_python(data_file, grader, labels):
    cfg = load_config(doc_recipe("data.md", data_file))
    assert cfg.judge.type == "verifier" and cfg.task.grader.type == grader
    task = preflight(cfg, "docs/data.md").task  # the checks `selfplay run` makes, which build the task
    assert task.has_verifier
    rows = {**by_row(task, "train"), **by_row(task, "eval")}
    from selfplay.judges import PromptGroup

    groups = [PromptGroup(rows[r].id, rows[r].prompt, [resp for resp, _ in cases], rows[r].reference, rows[r].meta)
              for r, cases in labels.items()]
    judge = VerifierJudge(task)
    scores = judge.score(groups)
    assert scores == [[1.0 if right else 0.0 for _, right in cases] for cases in labels.values()]
    assert judge.stats == {"grader_errors": 0, "grader_timeouts": 0}
    for e in rows.values():  # the warm start trains on the whole worked solution; it grades as right
        assert task.score(e, e.reference) == 1.0
    if grader == "numeric":
        assert rows[0].reference.startswith("In the afternoon") and rows[0].reference.endswith("#### 216")


def test_a_reference_the_grader_cannot_read_is_named_at_load(tmp_path):
    data = tmp_path / "qa.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(8)]
    rows[5]["answer"] = "I am not sure how to do this one."
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"policy": {"preset": "nano"}, "judge": {"type": "verifier"}, "evaluation": {"num_prompts": 1},
              "task": {"type": "dataset", "path": str(data), "prompt_column": "question",
                       "reference_column": "answer", "grader": {"type": "numeric", "extract": "marker"}}}
    with pytest.raises(ConfigError) as err:
        preflight(load_config(recipe), "qa.yaml")
    message = str(err.value)
    assert f"{data}: row 5: column 'answer'" in message and "has no answer to extract ('marker')" in message
    rows[5]["answer"] = "#### 10"
    del rows[2]["answer"]  # a row without the column
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"row 2: no reference in column 'answer'"):
        preflight(load_config(recipe), "qa.yaml")


def test_grader_failures_are_counted_in_the_judge_stage_stats(tmp_path):
    cfg = load_config(doc_recipe("data.md", "gsm8k_style.jsonl"))
    task = build_task_from_config(cfg)
    compare = task.grader._compare
    task.grader._compare = lambda answer, gold: 1 / 0 if answer == "13" else compare(answer, gold)
    e = task.train_examples()[0]
    generations = pa.Table.from_pylist([
        {"prompt_id": e.id, "prompt": e.prompt, "reference": e.reference, "sample_index": i, "response": r}
        for i, r in enumerate(["#### 216", "13", "#### 13", "no number"])])
    judgments, stats = judge_table(generations, VerifierJudge(task), {e.id: e})
    assert judgments.column("score").to_pylist() == [1.0, 0.0, 0.0, 0.0]  # the raising answers score 0
    assert stats["grader_errors"] == 2 and stats["grader_timeouts"] == 0


def test_recipe_fields_of_graders():
    base = {"policy": {"preset": "nano"}, "judge": {"type": "verifier"},
            "task": {"type": "dataset", "path": "x.jsonl", "reference_column": "answer"}}
    with pytest.raises(ConfigError, match="without task.grader"):
        load_config(base)
    short = load_config({**base, "task": {**base["task"], "grader": "math"}})
    assert short.task.grader.type == "math" and short.task.grader.extract == "auto"
    with pytest.raises(ConfigError, match="pattern: needed by"):
        load_config({**base, "task": {**base["task"], "grader": "regex"}})
    with pytest.raises(ConfigError, match="grader.extract"):
        load_config({**base, "task": {**base["task"], "grader": {"type": "exact", "extract": "first_word"}}})


def test_a_missing_extra_is_named_at_validation(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # injected fault: the `tasks` extra is not installed
                        lambda name, *a: None if name in ("math_verify", "reasoning_gym") else real(name, *a))
    base = {"policy": {"preset": "nano"}, "judge": {"type": "verifier"}}
    with pytest.raises(ConfigError, match=r"grader `math` needs the `tasks` extra .*pip install -e '\.\[tasks\]'"):
        load_config({**base, "task": {"type": "dataset", "path": "x.jsonl", "reference_column": "a", "grader": "math"}})
    with pytest.raises(ConfigError, match=r"task `reasoning_gym` needs the `tasks` extra"):
        load_config({**base, "task": {"type": "reasoning_gym", "name": "chain_sum"}})
