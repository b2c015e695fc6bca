"""The user guide's examples run: the task, the judge and the recipe that docs/tasks.md, docs/judges.md,
docs/models.md and docs/data.md show are loaded the way ``selfplay run`` loads them and checked against
the contracts the pages state. (The recipe runs end to end in tests/e2e/test_byo_model_data.py.)"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from selfplay.config import load_config
from selfplay.config.schema import PythonJudgeConfig
from selfplay.judges import JudgeError, PromptGroup, build_judge, run_judge
from selfplay.judges.rules import VerifierJudge
from selfplay.loop.factory import build_task_from_config
from selfplay.tasks import build_task

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # `module:attr` targets are imported from the working directory


def test_every_guide_page_names_an_example_that_exists():
    for page in ("tasks.md", "judges.md", "models.md", "data.md"):
        text = (DOCS / page).read_text()
        named = set(re.findall(r"docs/examples/[\w.]+", text))
        assert named, page
        for path in named:
            assert (ROOT / path).is_file(), (page, path)


def test_own_task_follows_the_task_contract():
    task = build_task("python", target="docs.examples.reverse_task:ReverseWords", chat=True)
    train, held = task.train_examples(100, seed=0), task.eval_examples(20, seed=5)
    assert not {e.id for e in train} & {e.id for e in held}  # disjoint for any pair of seeds
    assert [e.id for e in task.train_examples(100, seed=0)] == [e.id for e in train]
    for e in train[:20]:
        assert task.score(e, e.reference) == 1.0
        assert 0.0 <= task.score(e, "cat dog") <= 1.0
    groups = [PromptGroup(e.id, e.prompt, [e.reference, "nonsense"], e.reference) for e in held]
    scores = run_judge(VerifierJudge(task), groups)
    assert all(s[0] == 1.0 and s[1] == 0.0 for s in scores)


class Fixed:
    """A task whose verifier returns a fixed value: what docs/tasks.md says happens to each."""

    has_verifier = True

    def __init__(self, value):
        self.value = value

    def train_examples(self, n=None, seed=0):
        return []

    def eval_examples(self, n=None, seed=0):
        return []

    def score(self, example, response):
        return self.value


def test_verifier_scores_outside_the_contract_are_named_errors():
    groups = [PromptGroup("p-1", "Q", ["a", "b"])]
    assert run_judge(VerifierJudge(Fixed(None)), groups) == [[None, None]]  # undecided: in no pair
    assert run_judge(VerifierJudge(Fixed(0.25)), groups) == [[0.25, 0.25]]
    for bad, message in [(math.nan, "score 0 is nan"), (1.5, "must be in \\[0, 1\\]"), ("yes", "returned 'yes'")]:
        with pytest.raises(JudgeError, match=message):
            run_judge(VerifierJudge(Fixed(bad)), groups)


def test_own_judge_scores_and_abstains():
    cfg = PythonJudgeConfig(type="python", target="docs.examples.keyword_judge:KeywordJudge",
                            kwargs={"words": ["water", "tip"]})
    judge = build_judge(cfg)
    groups = [PromptGroup("p-1", [{"role": "user", "content": "Q"}],
                          ["Here is a tip: water daily.", "No.", "", " ".join(["word"] * 50)])]
    (scores,) = run_judge(judge, groups)
    assert scores == [pytest.approx(1 - 0.5 * 6 / 40), pytest.approx(-0.5 / 40), None, -0.5]


def test_guide_recipe_validates_and_reads_multi_turn_chat_rows(tmp_path):
    cfg = load_config(DOCS / "examples" / "chat_dataset.yaml", [f"policy.path={tmp_path}"])
    assert cfg.policy.warmstart is None and cfg.task.type == "dataset"
    task = build_task_from_config(cfg)
    train, held = task.train_examples(), task.eval_examples()
    from selfplay.tasks.base import prompt_key

    # The split is by prompt: 48 rows hold 23 distinct prompts; every one is on exactly one side, and an
    # eval prompt is kept once however many rows repeat it.
    train_keys, held_keys = {prompt_key(e.prompt) for e in train}, [prompt_key(e.prompt) for e in held]
    assert len(held_keys) == len(set(held_keys)) >= 4 and not train_keys & set(held_keys)
    assert len(train_keys | set(held_keys)) == 23
    assert all(isinstance(e.prompt, list) and e.prompt[-1]["role"] == "user" for e in train)
    assert any(len(e.prompt) == 4 for e in train)  # multi-turn rows
    assert train[0].id.startswith("chat-")
