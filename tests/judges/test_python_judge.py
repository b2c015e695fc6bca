"""A user's judge from a module written into a temporary working directory."""

from __future__ import annotations

import textwrap

import pytest

from selfplay.config.schema import PythonJudgeConfig
from selfplay.judges import JudgeError, PromptGroup, build_judge, run_judge

MODULE = '''
def by_length(groups, bonus=0.0):
    return [[len(r) + bonus for r in g.responses] for g in groups]

def short(groups):
    return [[1.0, 1.0] for g in groups]

def crash(groups):
    for g in groups:
        if g.prompt_id == "p-bad":
            raise KeyError("no such thing")
    return [[0.0] * len(g.responses) for g in groups]

class Contains:
    def __init__(self, word):
        self.word = word
        self.stats = {"calls": 0}

    def score(self, groups):
        self.stats["calls"] += 1
        return [[float(self.word in r) for r in g.responses] for g in groups]
'''

GROUPS = [PromptGroup("p-1", "Q", ["a cat", "dog"]), PromptGroup("p-bad", "Q", ["cat!", "", "x"])]


@pytest.fixture
def user_module(tmp_path, monkeypatch, request):
    name = f"userjudge_{request.node.name.split('[')[0]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path)
    return name


def judge(target, **kwargs):
    return build_judge(PythonJudgeConfig(type="python", target=target, kwargs=kwargs))


def test_function_and_class_targets(user_module):
    fn = judge(f"{user_module}:by_length", bonus=0.5)
    assert fn.name == f"python:{user_module}:by_length"
    assert run_judge(fn, GROUPS) == [[5.5, 3.5], [4.5, 0.5, 1.5]]
    cls = judge(f"{user_module}:Contains", word="cat")
    assert run_judge(cls, GROUPS) == [[1.0, 0.0], [1.0, 0.0, 0.0]]
    assert cls.stats == {"calls": 1}


def test_wrong_shape_names_target_and_prompt(user_module):
    message = rf"python:{user_module}:short', prompt 'p-bad': expected 3 scores, got 2"
    with pytest.raises(JudgeError, match=message):
        run_judge(judge(f"{user_module}:short"), GROUPS)


def test_raising_judge_names_prompt(user_module):
    with pytest.raises(JudgeError, match=rf"python:{user_module}:crash' failed on prompt 'p-bad': KeyError"):
        run_judge(judge(f"{user_module}:crash"), GROUPS)


def test_bad_targets(user_module):
    with pytest.raises(TypeError, match="Contains.*failed: TypeError"):
        judge(f"{user_module}:Contains")  # missing the `word` argument
    with pytest.raises(ImportError, match="no attribute 'nope'"):
        judge(f"{user_module}:nope")
