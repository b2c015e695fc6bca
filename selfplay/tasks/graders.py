"""Graders: a reference answer turned into a verifier, for dataset files with checkable answers.

``build_grader(type, ...)`` gives one of

* ``exact``: the extracted answers are equal after normalisation (whitespace collapsed, case folded
  unless ``case_sensitive``, surrounding ``$`` and a trailing full stop dropped);
* ``numeric``: the extracted answers read as numbers are equal within ``tolerance``, relative to the
  reference's size with a floor of 1 (``|a - b| <= tolerance * max(1, |b|)``): ``0.5``, ``1/2``,
  ``\\frac{1}{2}`` and ``.5`` are one number, ``1,234`` is 1234, and ``$1,250 dollars``
  reads as 1250. A text holding several numbers reads as its last one;
* ``regex``: ``pattern`` extracts the answer (its last match; the group named ``answer``, else group 1,
  else the whole match), then ``exact``;
* ``math``: HF's math-verify (``parse`` then ``verify``), for LaTeX, ``\\boxed{}``, fractions, sets and
  intervals (:mod:`selfplay.tasks.math_grader`, which runs it in a child process).

Answers are extracted with :mod:`selfplay.tasks.answers` (``extract``, default ``auto``), from the
response and from the reference alike; ``reference_extract: whole`` takes references as they are (bare
answers) while responses are still extracted.

Choices:

* ``check_reference`` is what a task calls for every row when it is built: a reference the grader cannot
  read (no answer found, no number, math-verify parses nothing) is an error there, naming the row.
* ``score`` never raises. A grader that raises or times out on one answer scores it 0 and counts it in
  ``counts`` (``errors``, ``timeouts``, and the last message), which the verifier judge records in the
  judge stage's stats: one malformed sample does not end a run, and many of them are visible.
* Prepared references are cached by text, so a reference is read once however many samples it grades.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

from selfplay.tasks.answers import last_number
from selfplay.tasks.grading import GradeCounts, Grader, GraderTimeout

__all__ = ["GRADERS", "GradeCounts", "Grader", "GraderTimeout", "build_grader", "parse_number"]

GRADERS = ("exact", "numeric", "regex", "math")


def normalize_text(text: str, case_sensitive: bool = False) -> str:
    """Whitespace collapsed, surrounding ``$`` and a trailing full stop dropped, case folded (unless asked)."""
    text = " ".join(text.split()).strip("$ ")
    text = text[:-1].rstrip() if text.endswith(".") else text
    return text if case_sensitive else text.casefold()


class ExactGrader(Grader):
    kind = "exact"

    def __init__(self, case_sensitive: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.case_sensitive = case_sensitive

    def _gold(self, text: str, structured: bool = False) -> str:
        return normalize_text(text, self.case_sensitive)

    def _compare(self, answer: str, gold: str) -> float:
        return float(normalize_text(answer, self.case_sensitive) == gold)

    def _key(self, answer: str) -> str | None:
        return normalize_text(answer, self.case_sensitive)


_FRAC = re.compile(r"-?\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_MAX_DIGITS = 400  # longer numbers are not answers anyone writes; Fraction of them is slow


def parse_number(text: str) -> float | None:
    """The number ``text`` holds (its last number when it holds several), or None.

    ``"1,234"`` -> 1234, ``"1/2"`` and ``"\\frac{1}{2}"`` -> 0.5, ``"-.5"`` -> -0.5, ``"1e-3"`` -> 0.001."""
    found = last_number(text)
    if found is None or len(found) > _MAX_DIGITS:
        return None
    frac = _FRAC.fullmatch(found)
    if frac:
        num, den = _value(frac.group(1)), _value(frac.group(2))
        value = num / den if den else None
        return -value if value is not None and found.startswith("-") else value
    if "/" in found:
        num_text, den_text = found.split("/", 1)
        num, den = _value(num_text), _value(den_text)
        return num / den if den else None
    return _value(found)


def _value(text: str) -> float:
    text = text.replace(",", "").replace(" ", "")
    if "e" in text.lower():
        return float(text)
    return float(Fraction(text))


class NumericGrader(Grader):
    kind = "numeric"

    def __init__(self, tolerance: float = 1e-6, **kw: Any) -> None:
        super().__init__(**kw)
        if not (tolerance >= 0 and math.isfinite(tolerance)):
            raise ValueError(f"grader tolerance: must be a finite number >= 0, got {tolerance}")
        self.tolerance = tolerance

    def _gold(self, text: str, structured: bool = False) -> float:
        value = parse_number(text)
        if value is None or not math.isfinite(value):
            raise ValueError(f"the reference's answer {text[-80:]!r} holds no number")
        return value

    def _compare(self, answer: str, gold: float) -> float:
        value = parse_number(answer)
        if value is None or not math.isfinite(value):
            return 0.0
        return float(abs(value - gold) <= self.tolerance * max(1.0, abs(gold)))

    def _key(self, answer: str) -> str | None:
        value = parse_number(answer)
        return None if value is None or not math.isfinite(value) else format(value, ".12g")


class RegexGrader(ExactGrader):
    kind = "regex"

    def __init__(self, pattern: str, **kw: Any) -> None:
        kw["extract"] = "none"  # the pattern is the extraction
        super().__init__(**kw)
        try:
            self.pattern = re.compile(pattern, re.S)
        except re.error as exc:
            raise ValueError(f"grader pattern: {pattern!r} is not a regular expression: {exc}") from None

    def _find(self, text: str) -> str | None:
        matches = list(self.pattern.finditer(text))
        if not matches:
            return None
        m = matches[-1]
        if "answer" in self.pattern.groupindex:
            return m.group("answer")
        return m.group(1) if self.pattern.groups else m.group(0)

    def _answer(self, response: str) -> str | None:
        return self._find(response)

    def _gold_of(self, reference: str) -> Any:
        if self.reference_extract == "same" and isinstance(reference, str) and self._find(reference) is None:
            raise ValueError(f"the pattern {self.pattern.pattern!r} does not match the reference "
                             f"{reference[-80:]!r} (set reference_extract: whole for bare references)")
        return super()._gold_of(reference)

    def _gold(self, text: str, structured: bool = False) -> str:
        found = self._find(text) if self.reference_extract == "same" else text
        return normalize_text(found or "", self.case_sensitive)


def build_grader(type: str, **params: Any) -> Grader:
    """The grader ``type`` (one of ``GRADERS``) with its parameters (see each class)."""
    if type == "exact":
        return ExactGrader(**params)
    if type == "numeric":
        return NumericGrader(**params)
    if type == "regex":
        if not params.get("pattern"):
            raise ValueError("grader type 'regex' needs pattern: (a regular expression; group 1 is the answer)")
        return RegexGrader(**params)
    if type == "math":
        from selfplay.tasks.math_grader import MathGrader

        return MathGrader(**params)
    raise ValueError(f"unknown grader {type!r}; expected one of {GRADERS}")
