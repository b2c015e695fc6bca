"""User tasks plugged in as ``module:attr`` from the current directory, and the loader's errors."""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest

from selfplay.plugins import PluginError, load_object
from selfplay.tasks import Task, build_task

USER_TASK = '''
from selfplay.tasks import Example


class EchoTask:
    """Repeat a word; no import of selfplay is needed beyond Example."""

    has_verifier = True

    def __init__(self, word="hi", size=4):
        self.word, self.size = word, size

    def _make(self, split, n):
        w = self.word
        return [Example(f"{split}-{i}", f"say {w} {i}", f"{w} {i}") for i in range(n or self.size)]

    def train_examples(self, n=None, seed=0):
        return self._make("train", n)

    def eval_examples(self, n=None, seed=0):
        return self._make("eval", n)

    def score(self, example, response):
        return float(response.strip() == example.reference)


def make_echo(**kwargs):
    return EchoTask(**kwargs)


class Namespace:
    Inner = EchoTask


class NotATask:
    has_verifier = False

    def train_examples(self, n=None, seed=0):
        return []


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a uniquely named user module into a fresh cwd; restore sys.path afterwards."""
    name = f"usertasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_TASK))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    yield name
    sys.modules.pop(name, None)


def test_user_task_class_and_factory(user_module):
    task = build_task("python", target=f"{user_module}:EchoTask", word="yo", size=3)
    assert isinstance(task, Task)
    train = task.train_examples()
    assert [e.prompt for e in train] == ["say yo 0", "say yo 1", "say yo 2"]
    assert task.score(train[1], " yo 1\n") == 1.0 and task.score(train[1], "yo 2") == 0.0
    made = build_task("python", target=f"{user_module}:make_echo", size=2)
    assert len(made.eval_examples()) == 2
    assert load_object(f"{user_module}:Namespace.Inner") is load_object(f"{user_module}:EchoTask")


def test_python_task_errors(user_module):
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['colour'\]; accepted: \['word', 'size'\]"):
        build_task("python", target=f"{user_module}:EchoTask", colour="red")
    with pytest.raises(TypeError, match=r"NotATask.*not a Task: missing 'eval_examples'; missing 'score'"):
        build_task("python", target=f"{user_module}:NotATask")
    with pytest.raises(TypeError, match="is a int, not a class or factory"):
        build_task("python", target=f"{user_module}:NOT_CALLABLE")
    with pytest.raises(TypeError, match="needs target='module:attr'"):
        build_task("python")


def test_load_object_names_what_failed(user_module, tmp_path):
    with pytest.raises(PluginError, match=r"'no_such_mod_xyz:Task'.*module 'no_such_mod_xyz' not found"):
        load_object("no_such_mod_xyz:Task")
    with pytest.raises(PluginError, match=rf"'{user_module}' has no attribute 'Nope'.*names: EchoTask"):
        load_object(f"{user_module}:Nope")
    with pytest.raises(PluginError, match=rf"'{user_module}:Namespace' has no attribute 'Missing'"):
        load_object(f"{user_module}:Namespace.Missing")
    for bad in ["no_colon", "a:b:c", ":X", "mod:", "mod:1bad"]:
        with pytest.raises(PluginError, match="must look like 'module:attr'"):
            load_object(bad)
    broken = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{broken}.py").write_text("x = 1 / 0\n")
    with pytest.raises(PluginError, match=rf"importing module '{broken}' failed: ZeroDivisionError"):
        load_object(f"{broken}:x")
    needs_dep = f"needsdep_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{needs_dep}.py").write_text("import not_installed_dep_xyz\n")
    with pytest.raises(PluginError, match=r"module .* failed: No module named 'not_installed_dep_xyz'"):
        load_object(f"{needs_dep}:x")
    assert isinstance(PluginError("x"), ImportError)
