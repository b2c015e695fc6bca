"""Answer extraction: the part of a response (or of a reference) that a grader compares.

Pure string functions, shared by the dataset graders (:mod:`selfplay.tasks.graders`) and the
reasoning-gym task, and applied the same way to a sampled response and to the reference answer, so a
GSM8K reference (a worked solution ending in ``#### 42``) and a response ending in ``#### 42`` both
give ``"42"``.

Ways to extract (``how``):

* ``answer_tag``: the content of the last ``<answer>...</answer>`` (reasoning-gym's and R1's format);
* ``boxed``: the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included
  (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``);
* ``marker``: the rest of the line after the last marker (``####``, ``The answer is``, ``Answer:``;
  case-insensitive), a trailing full stop dropped;
* ``last_number``: the last number written in the text (``1,234``, ``-0.5``, ``1/2``, ``\\frac{1}{2}``);
* ``none``: the whole text, stripped;
* ``auto`` (the default): the first of ``answer_tag``, ``boxed`` and ``marker`` that finds something,
  else the whole text stripped. A bare reference (``"42"``) is therefore its own answer.

``None`` means "no answer found": a response without one scores 0, a reference without one is an
error when the task is built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

EXTRACTORS = ("auto", "answer_tag", "boxed", "marker", "last_number", "none")
DEFAULT_MARKERS: tuple[str, ...] = ("####", "The answer is", "Answer:")

_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A number as people write it: 1,234 (groups of three only), -12, 0.5, .5, 1e-3, 1/2.
_PLAIN = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
_FRACTION = rf"-?\\[dt]?frac\s*\{{\s*(?:{_PLAIN})\s*\}}\s*\{{\s*(?:{_PLAIN})\s*\}}"
_NUMBER = re.compile(rf"(?:{_PLAIN})(?:\s*/\s*(?:{_PLAIN}))?|{_FRACTION}")


def answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>``, stripped; None when there is none."""
    found = _TAG.findall(text)
    return found[-1].strip() if found else None


def boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with its nested braces balanced; None when there is none
    (or its braces never close)."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def after_marker(text: str, markers: Sequence[str] = DEFAULT_MARKERS) -> str | None:
    """The rest of the line after the last occurrence of any marker (case-insensitive), stripped of
    spaces, a leading colon and a trailing full stop; None when no marker is followed by an answer."""
    folded = text.casefold()
    best, best_end = -1, -1
    for marker in markers:
        pos = folded.rfind(marker.casefold())
        if pos > best:
            best, best_end = pos, pos + len(marker)
    if best < 0:
        return None
    rest = text[best_end:].lstrip(" \t:").split("\n", 1)[0].strip()
    rest = rest[:-1].rstrip() if rest.endswith(".") else rest
    return rest or None


def last_number(text: str) -> str | None:
    """The last number in ``text``, as written (``"1,234"``, ``"1/2"``, ``"\\frac{1}{2}"``); None when
    there is none."""
    found = _NUMBER.findall(text)
    return found[-1].strip() if found else None


def extract(text: str, how: str = "auto", markers: Sequence[str] = DEFAULT_MARKERS) -> str | None:
    """The answer in ``text`` found the way ``how`` names (see the module docstring)."""
    if how == "auto":
        for found in (answer_tag(text), boxed(text), after_marker(text, markers)):
            if found:
                return found
        return text.strip() or None
    if how == "answer_tag":
        return answer_tag(text)
    if how == "boxed":
        return boxed(text)
    if how == "marker":
        return after_marker(text, markers)
    if how == "last_number":
        return last_number(text)
    if how == "none":
        return text.strip() or None
    raise ValueError(f"unknown answer extraction {how!r}; expected one of {EXTRACTORS}")
