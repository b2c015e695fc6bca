"""Verifiable tasks and prompt datasets: where the prompts of each iteration come from.

``build_task(kind, **params)`` is the one factory (an explicit if/elif, no registry):

* ``arithmetic`` -> ``ArithmeticTask(level, partial_credit, chat, train_size, eval_size)``
* ``sorting`` -> ``SortingTask(min_len, max_len, max_value, descending, partial_credit, chat,
  train_size, eval_size)``
* ``word_problems`` -> ``WordProblemTask(chat, train_size, eval_size)``
* ``dataset`` -> ``DatasetTask(path, prompt_column, reference_column, id_column, eval_path,
  eval_fraction, split_seed, split, eval_split, grader)``; ``grader`` (``{"type": "numeric", ...}``,
  :mod:`selfplay.tasks.graders`) makes the reference column a verifier
* ``reasoning_gym`` -> ``ReasoningGymTask(name, config, train_size, eval_size, seed, prompt_template, chat,
  extract, markers)`` (the ``tasks`` extra; imported only when asked for)
* ``python`` -> ``load_object(target)(**params)``: a user's class or factory named ``"module:attr"``
  (imported from the current directory), checked to implement the ``Task`` API.

Parameters are checked against the constructor's signature first, so a typo names the accepted ones.
"""

from __future__ import annotations

import inspect
from typing import Any

from selfplay.tasks.arithmetic import LEVELS, ArithmeticTask
from selfplay.tasks.base import Example, NoVerifierError, Task, check_task
from selfplay.tasks.dataset import DatasetTask
from selfplay.tasks.sorting import SortingTask
from selfplay.tasks.word_problems import WordProblemTask

TASK_KINDS = ("arithmetic", "sorting", "word_problems", "dataset", "reasoning_gym", "python")

__all__ = [
    "LEVELS",
    "TASK_KINDS",
    "ArithmeticTask",
    "DatasetTask",
    "Example",
    "NoVerifierError",
    "SortingTask",
    "Task",
    "WordProblemTask",
    "build_task",
    "check_task",
]


def build_task(kind: str, **params: Any) -> Task:
    """Build the task of ``kind`` (one of ``TASK_KINDS``) from ``params``."""
    if kind == "arithmetic":
        return _call(ArithmeticTask, params, "arithmetic task")
    elif kind == "sorting":
        return _call(SortingTask, params, "sorting task")
    elif kind == "word_problems":
        return _call(WordProblemTask, params, "word_problems task")
    elif kind == "dataset":
        return _call(DatasetTask, params, "dataset task")
    elif kind == "reasoning_gym":
        from selfplay.tasks.reasoning_gym_task import ReasoningGymTask

        return _call(ReasoningGymTask, params, "reasoning_gym task")
    elif kind == "python":
        from selfplay.plugins import load_object

        if "target" not in params:
            raise TypeError("python task needs target='module:attr' (a Task class or factory)")
        target = params.pop("target")
        factory = load_object(target)
        if not callable(factory):
            kind_name = type(factory).__name__
            raise TypeError(f"python task target {target!r} is a {kind_name}, not a class or factory")
        return check_task(_call(factory, params, f"python task {target!r}"), f"python task {target!r}")
    raise ValueError(f"unknown task kind {kind!r}; expected one of {TASK_KINDS}")


def _call(factory: Any, params: dict[str, Any], what: str) -> Any:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: let the call report
        return factory(**params)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in params if k not in sig.parameters]
    if unknown and not accepts_any:
        raise TypeError(f"{what}: unknown parameter(s) {unknown}; accepted: {list(sig.parameters)}")
    try:
        sig.bind(**params)
    except TypeError as exc:
        raise TypeError(f"{what}: {exc}; accepted: {list(sig.parameters)}") from None
    return factory(**params)

