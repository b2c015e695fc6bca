"""A user's own judge: any ``module:attr`` importable from the working directory.

``target`` may be a function ``fn(groups, **kwargs) -> list[list[float | None]]``, or a class built as
``cls(**kwargs)`` whose instances have a ``score(groups)`` method (or are callable with the groups).
Groups are ``selfplay.judges.PromptGroup``. The return is checked by ``run_judge`` (one list per
prompt, one finite float or ``None`` per response) and any error names this target and the prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from selfplay.judges.base import PromptGroup, Scores


class PythonJudge:
    """Wraps a user callable or class loaded with ``selfplay.plugins.load_object``."""

    def __init__(self, target: str, kwargs: dict[str, Any] | None = None) -> None:
        from selfplay.plugins import load_object

        self.name = f"python:{target}"
        self._instance: Any = None
        kwargs = dict(kwargs or {})
        obj = load_object(target)
        if inspect.isclass(obj):
            try:
                instance = obj(**kwargs)
            except Exception as err:
                raise TypeError(f"judge.target {target!r}: building {obj.__name__}(**{kwargs}) failed: "
                                f"{type(err).__name__}: {err}") from err
            self._instance = instance
            fn = getattr(instance, "score", None) or (instance if callable(instance) else None)
            if fn is None:
                raise TypeError(f"judge.target {target!r}: {obj.__name__} instances have no score(groups)")
            self._fn: Callable[[list[PromptGroup]], Any] = fn
        elif callable(obj):
            self._fn = (lambda groups: obj(groups, **kwargs)) if kwargs else obj
        else:
            raise TypeError(f"judge.target {target!r} is a {type(obj).__name__}, not a callable or class")

    @property
    def stats(self) -> dict[str, Any]:
        """The user judge instance's own ``stats`` dict, if it keeps one."""
        return dict(getattr(self._instance, "stats", None) or {})

    def score(self, groups: list[PromptGroup]) -> Scores:
        return self._fn(groups)
