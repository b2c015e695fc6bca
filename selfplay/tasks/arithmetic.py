"""Multi-digit arithmetic with difficulty levels and an exact (optionally graded) verifier.

Prompt ``"37+48="``, reference ``"85"``. Levels (operand digit counts; a "1-2 digit" operand is drawn by
first choosing its digit count uniformly, a 1-digit operand includes 0):

| level | operations | operands                                        | results              |
|-------|------------|-------------------------------------------------|----------------------|
| 1     | +          | 1-2 digits + 1-2 digits                         | >= 0                 |
| 2     | + -        | 2 digits and 2 digits                           | >= 0 (a >= b for -)  |
| 3     | + -        | 3 digits and 3 digits                           | may be negative      |
| 4     | + - *      | +/-: 3 and 3 digits; *: 2 digits x 1 digit      | may be negative      |
| 5     | + - *      | +/-: 4 and 4 digits; *: 2 digits x 2 digits     | may be negative      |
| 6     | + - *      | +/-: 5 and 5 digits; *: 3 digits x 2 digits     | may be negative      |

Each example picks one row's operation uniformly. ``37+48=`` and ``48+37=`` are one problem (one key,
one side of the train/eval split); ``space_size`` counts problems that way.

Verifier: strip the response, take its first line, read the integer at its start (``^[+-]?\\d+``;
anything after it is ignored, so ``"85 because..."`` counts). No leading integer scores 0.
``partial_credit=True`` gives an inexact integer the fraction of right-aligned digit positions (plus the
sign, when either number is negative) that match; exact is always 1.0.
"""

from __future__ import annotations

import random
import re

from selfplay.tasks.base import Example, GeneratedTask, Problem

Form = tuple[str, tuple[int, int], tuple[int, int]]  # (op, digits of a (lo, hi), digits of b (lo, hi))

LEVELS: dict[int, tuple[list[Form], bool]] = {  # level -> (forms, negative results allowed)
    1: ([("+", (1, 2), (1, 2))], False),
    2: ([("+", (2, 2), (2, 2)), ("-", (2, 2), (2, 2))], False),
    3: ([("+", (3, 3), (3, 3)), ("-", (3, 3), (3, 3))], True),
    4: ([("+", (3, 3), (3, 3)), ("-", (3, 3), (3, 3)), ("*", (2, 2), (1, 1))], True),
    5: ([("+", (4, 4), (4, 4)), ("-", (4, 4), (4, 4)), ("*", (2, 2), (2, 2))], True),
    6: ([("+", (5, 5), (5, 5)), ("-", (5, 5), (5, 5)), ("*", (3, 3), (2, 2))], True),
}

_LEADING_INT = re.compile(r"[+-]?\d+")


def parse_leading_int(response: str) -> int | None:
    """The integer at the start of the first line of ``response`` (after stripping), else None."""
    text = response.strip()
    first_line = text.splitlines()[0] if text else ""
    match = _LEADING_INT.match(first_line)
    return int(match.group()) if match else None


def digit_credit(pred: int, ref: int) -> float:
    """Fraction of right-aligned digit positions (and the sign, if any side is negative) that match."""
    p, r = str(abs(pred)), str(abs(ref))
    width = max(len(p), len(r))
    matches = sum(a == b for a, b in zip(p.rjust(width), r.rjust(width)))
    if pred < 0 or ref < 0:
        width += 1
        matches += (pred < 0) == (ref < 0)
    return matches / width


def _operand(rng: random.Random, digits: tuple[int, int]) -> int:
    d = rng.randint(*digits)
    return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)


def _operand_values(digits: tuple[int, int]) -> range:
    lo, hi = digits
    return range(0 if lo == 1 else 10 ** (lo - 1), 10**hi)


def level_space_size(level: int) -> int:
    """Distinct problems of ``level``: commuted operands count once, ``a-b`` with ``a < b`` is swapped
    where results must be >= 0."""
    forms, negative_ok = LEVELS[level]
    total = 0
    for op, da, db in forms:
        va, vb = _operand_values(da), _operand_values(db)
        if op in "+*" or (op == "-" and not negative_ok):
            if da == db:  # unordered pairs from one range
                total += len(va) * (len(va) + 1) // 2
            else:  # disjoint-ish ranges: count unordered pairs {a, b}
                total += len({(min(a, b), max(a, b)) for a in va for b in vb})
        else:
            total += len(va) * len(vb)
    return total


class ArithmeticTask(GeneratedTask):
    """``a op b =`` problems at a difficulty ``level`` (see the table in the module docstring)."""

    id_prefix = "arith"

    def __init__(self, level: int = 1, partial_credit: bool = False, chat: bool = False,
                 train_size: int = 1000, eval_size: int = 200) -> None:
        if level not in LEVELS:
            raise ValueError(f"arithmetic level must be one of {sorted(LEVELS)}, got {level!r}")
        super().__init__(chat=chat, train_size=train_size, eval_size=eval_size)
        self.level = level
        self.partial_credit = partial_credit
        self.id_prefix = f"arith{level}"

    def sample(self, rng: random.Random) -> Problem:
        forms, negative_ok = LEVELS[self.level]
        op, da, db = rng.choice(forms)
        a, b = _operand(rng, da), _operand(rng, db)
        if op == "-" and not negative_ok and a < b:
            a, b = b, a
        result = a + b if op == "+" else a - b if op == "-" else a * b
        text = f"{a}{op}{b}="
        # + and * commute: both orders are one problem (one key), so they never straddle the split.
        key = f"{min(a, b)}{op}{max(a, b)}" if op in "+*" else f"{a}{op}{b}"
        return Problem(key=key, text=text, reference=str(result),
                       meta={"level": self.level, "a": a, "b": b, "op": op})

    @property
    def space_size(self) -> int:
        """Number of distinct problems (canonical keys) at this level."""
        return level_space_size(self.level)

    def score(self, example: Example, response: str) -> float:
        if example.reference is None:
            raise ValueError(f"example {example.id} has no reference to verify against")
        pred, ref = parse_leading_int(response), int(example.reference)
        if pred is None:
            return 0.0
        if pred == ref:
            return 1.0
        return digit_credit(pred, ref) if self.partial_credit else 0.0
