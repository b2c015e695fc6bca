"""The grader base: extract the answer, compare it with the reference's, never raise, count failures.

:mod:`selfplay.tasks.graders` builds the concrete graders on it (and :mod:`selfplay.tasks.math_grader`
the ``math`` one); it lives apart so both can import it without importing each other.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from selfplay.tasks.answers import DEFAULT_MARKERS, EXTRACTORS, extract

_CACHE_SIZE = 65536


@dataclass
class GradeCounts:
    """Answers a grader failed on, cumulative: it raised (``errors``) or ran out of time (``timeouts``).
    Thread-safe; its lock is left out when it is pickled (graders and tasks travel to Ray actors)."""

    errors: int = 0
    timeouts: int = 0
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def failed(self, exc: BaseException, timed_out: bool = False) -> None:
        """Count one answer that raised ``exc`` (or timed out)."""
        with self._lock:
            if timed_out:
                self.timeouts += 1
                self.last_error = str(exc)
            else:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"

    def as_dict(self) -> dict[str, Any]:
        return {"grader_errors": self.errors, "grader_timeouts": self.timeouts}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class Grader:
    """Extract, then compare: the shared machinery; subclasses implement ``_gold`` and ``_compare``."""

    kind = "grader"

    def __init__(self, extract: str = "auto", markers: Sequence[str] = DEFAULT_MARKERS,
                 reference_extract: str = "same") -> None:
        if extract not in EXTRACTORS:
            raise ValueError(f"grader extract: {extract!r} is not one of {EXTRACTORS}")
        if reference_extract not in ("same", "whole"):
            raise ValueError(f"grader reference_extract: {reference_extract!r} is not 'same' or 'whole'")
        self.extract, self.markers, self.reference_extract = extract, tuple(markers), reference_extract
        self.counts = GradeCounts()
        self._golds: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # graders travel to Ray actors; locks do not pickle
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- what a task calls -------------------------------------------------------------------------------
    def check_reference(self, reference: str) -> None:
        """Raise ``ValueError`` (with the reason) when ``reference`` cannot serve as a gold answer."""
        self._gold_of(reference)

    def score(self, response: str, reference: str) -> float:
        """1.0 when ``response``'s answer matches ``reference``'s, else 0.0; never raises (failures count)."""
        try:
            gold = self._gold_of(reference)
            answer = self._answer(response)
            if answer is None:
                return 0.0
            return self._compare(answer, gold)
        except GraderTimeout as exc:
            self.counts.failed(exc, timed_out=True)
            return 0.0
        except Exception as exc:  # noqa: BLE001  (one bad answer must not end a run)
            self.counts.failed(exc)
            return 0.0

    def vote_key(self, response: str) -> str | None:
        """The answer ``response`` gives, in the form this grader compares, so that answers it counts as
        equal vote together in ``maj@k`` (``0.5`` and ``1/2`` under ``numeric``); None: no answer."""
        answer = self._answer(response)
        if answer is None:
            return None
        try:
            return self._key(answer)
        except Exception:  # noqa: BLE001  (a vote falls back to the answer's text, never ends a run)
            return " ".join(answer.split())

    # -- the parts -------------------------------------------------------------------------------------
    def _answer(self, response: str) -> str | None:
        return extract(response, self.extract, self.markers)

    def _key(self, answer: str) -> str | None:
        return " ".join(answer.split())

    def _gold_of(self, reference: str) -> Any:
        with self._lock:
            if reference in self._golds:
                return self._golds[reference]
        if not isinstance(reference, str):
            raise ValueError(f"reference must be a string, got {type(reference).__name__}")
        whole = self.reference_extract == "whole"
        text = reference.strip() if whole else extract(reference, self.extract, self.markers)
        if not text:
            how = "is empty" if whole else f"has no answer to extract ({self.extract!r})"
            raise ValueError(f"the reference {how}: {reference[-80:]!r}")
        gold = self._gold(text, structured=not whole and text != reference.strip())
        with self._lock:
            if len(self._golds) >= _CACHE_SIZE:
                self._golds.clear()
            self._golds[reference] = gold
        return gold

    def _gold(self, text: str, structured: bool = False) -> Any:
        """The gold answer from the reference's answer ``text`` (``structured``: extracted, not the whole)."""
        return text

    def _compare(self, answer: str, gold: Any) -> float:
        raise NotImplementedError


class GraderTimeout(RuntimeError):
    """Grading one answer took longer than the grader's ``timeout_s``."""


