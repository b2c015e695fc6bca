"""The learner group starts beside the generators (``Runtime.start_learners``), and the generator pool
beside the learners' warm start (``Runtime.start_generators``): what a start raised reaches the stage
that asks for the group, and a group nobody asked for is still shut down.

No Ray here: the group's build is replaced by an injected fault or a recorder (the real start runs in
every e2e test, which all begin with a generate stage and so start their learners this way).
"""

from __future__ import annotations

import threading

import pytest

import selfplay.loop.factory as factory
from selfplay.config.schema import RunConfig
from selfplay.loop.runtime import Runtime, open_run_dir

CFG = {"name": "start", "iterations": 1, "policy": {"preset": "nano"}, "task": {"type": "arithmetic", "level": 1},
       "judge": {"type": "verifier"}, "evaluation": {"num_prompts": 0}}


class Group:
    def __init__(self, *args):
        self.args, self.shut = args, False
        self.thread = threading.current_thread().name

    def shutdown(self) -> None:
        self.shut = True


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    cfg = RunConfig.model_validate(CFG)
    rt = Runtime(cfg, open_run_dir(cfg, tmp_path / "run"))
    monkeypatch.setattr(rt, "ensure_ray", lambda: None)
    monkeypatch.setattr(rt, "_stop_ray", lambda: None)
    return rt


def test_a_failed_background_start_raises_in_the_stage_that_needs_the_group(runtime, monkeypatch, tmp_path):
    def fail(*args):
        raise RuntimeError("learner rank 0 did not finish setup (injected)")

    monkeypatch.setattr(factory, "build_learners", fail)
    runtime.start_learners(tmp_path / "policy")
    with pytest.raises(RuntimeError, match="did not finish setup"):
        runtime.learners(tmp_path / "policy")


def test_the_group_is_built_off_the_driver_thread_once_and_shut_down_even_if_never_asked_for(
        runtime, monkeypatch, tmp_path):
    made: list[Group] = []
    monkeypatch.setattr(factory, "build_learners", lambda *a: made.append(Group(*a)) or made[-1])
    runtime.start_learners(tmp_path / "policy")
    runtime.start_learners(tmp_path / "policy")  # a second call starts nothing
    assert runtime.learners(tmp_path / "policy") is made[0] and len(made) == 1
    assert made[0].thread == "start-learners" and made[0].args[1] == tmp_path / "policy"
    runtime.start_learners(tmp_path / "other")  # a group runs: nothing new starts
    assert len(made) == 1

    cfg = RunConfig.model_validate(CFG)
    unused = Runtime(cfg, open_run_dir(cfg, tmp_path / "run2"))
    monkeypatch.setattr(unused, "ensure_ray", lambda: None)
    monkeypatch.setattr(unused, "_stop_ray", lambda: None)
    unused.start_learners(tmp_path / "policy")
    unused._starting_learners.done.wait(10)
    unused.__exit__(None, None, None)
    assert made[1].shut


def test_generators_start_off_the_driver_thread_once_and_their_failure_reaches_the_caller(
        runtime, monkeypatch, tmp_path):
    made: list[Group] = []
    monkeypatch.setattr(factory, "build_generators", lambda *a: made.append(Group(*a)) or made[-1])
    runtime.start_generators(tmp_path / "base", version=0)
    assert runtime._starting_generators is not None
    runtime.start_generators(tmp_path / "base", version=0)  # a second call starts nothing
    pool = runtime.generators(tmp_path / "other", version=3)  # the started pool, as it was started
    assert pool is made[0] and len(made) == 1 and runtime._starting_generators is None
    assert made[0].thread == "start-generators" and made[0].args[1:] == (tmp_path / "base", 0)

    cfg = RunConfig.model_validate(CFG)
    failing = Runtime(cfg, open_run_dir(cfg, tmp_path / "run2"))
    monkeypatch.setattr(failing, "ensure_ray", lambda: None)

    def fail(*args):
        raise RuntimeError("generator-0 did not become ready (injected)")

    monkeypatch.setattr(factory, "build_generators", fail)
    failing.start_generators(tmp_path / "base", version=0)
    with pytest.raises(RuntimeError, match="did not become ready"):
        failing.generators(tmp_path / "base", version=0)


def test_a_started_pool_nobody_asked_for_is_shut_down(tmp_path, monkeypatch):
    made: list[Group] = []
    monkeypatch.setattr(factory, "build_generators", lambda *a: made.append(Group(*a)) or made[-1])
    cfg = RunConfig.model_validate(CFG)
    unused = Runtime(cfg, open_run_dir(cfg, tmp_path / "run"))
    monkeypatch.setattr(unused, "ensure_ray", lambda: None)
    monkeypatch.setattr(unused, "_stop_ray", lambda: None)
    unused.start_generators(tmp_path / "base", version=0)
    unused._starting_generators.done.wait(10)
    unused.__exit__(None, None, None)
    assert made[0].shut
