"""Sort a list of integers; the verifier compares the response's list with the sorted one.

Prompt ``"sort:38,5,91,12="`` (``"rsort:"`` for descending), reference ``"5,12,38,91"``. Lists have
``min_len``..``max_len`` values drawn uniformly from 0..``max_value`` (repeats allowed). A problem is its
multiset of values: every ordering of the same values is one problem (one key, one side of the split).

Verifier: strip the response, take its first line, read every integer in it in order (``[+-]?\\d+``;
whatever separates them - commas, spaces, brackets - is ignored). Exact list match scores 1.0.
``partial_credit=True`` scores the fraction of positions that hold the right value, over the longer of
the two lists (so missing or extra values cost); otherwise an inexact list scores 0.
"""

from __future__ import annotations

import random
import re

from selfplay.tasks.base import Example, GeneratedTask, Problem

_INT = re.compile(r"[+-]?\d+")


def parse_int_list(response: str) -> list[int]:
    """Integers in the first line of ``response`` (after stripping), in order."""
    text = response.strip()
    first_line = text.splitlines()[0] if text else ""
    return [int(x) for x in _INT.findall(first_line)]


def position_credit(pred: list[int], ref: list[int]) -> float:
    """Fraction of positions where ``pred`` equals ``ref``, over the longer length."""
    width = max(len(pred), len(ref))
    return sum(p == r for p, r in zip(pred, ref)) / width if width else 1.0


class SortingTask(GeneratedTask):
    """Sort ``min_len``..``max_len`` integers in 0..``max_value`` (ascending unless ``descending``)."""

    id_prefix = "sort"

    def __init__(self, min_len: int = 3, max_len: int = 6, max_value: int = 99, descending: bool = False,
                 partial_credit: bool = False, chat: bool = False, train_size: int = 1000,
                 eval_size: int = 200) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"sorting needs 1 <= min_len <= max_len, got {min_len} and {max_len}")
        if max_value < 1:
            raise ValueError(f"sorting max_value must be >= 1, got {max_value}")
        super().__init__(chat=chat, train_size=train_size, eval_size=eval_size)
        self.min_len, self.max_len, self.max_value = min_len, max_len, max_value
        self.descending = descending
        self.partial_credit = partial_credit

    def sample(self, rng: random.Random) -> Problem:
        values = [rng.randint(0, self.max_value) for _ in range(rng.randint(self.min_len, self.max_len))]
        head = "rsort" if self.descending else "sort"
        text = f"{head}:{','.join(map(str, values))}="
        reference = ",".join(map(str, sorted(values, reverse=self.descending)))
        # The key is the multiset: any order of the same values has the same answer, so it is one problem.
        key = f"{head}:{','.join(map(str, sorted(values)))}"
        return Problem(key=key, text=text, reference=reference, meta={"values": values})

    @property
    def space_size(self) -> int:
        """Number of distinct problems: multisets of ``min_len``..``max_len`` values from 0..``max_value``."""
        from math import comb

        values = self.max_value + 1
        return sum(comb(values + n - 1, n) for n in range(self.min_len, self.max_len + 1))

    def score(self, example: Example, response: str) -> float:
        if example.reference is None:
            raise ValueError(f"example {example.id} has no reference to verify against")
        pred, ref = parse_int_list(response), parse_int_list(example.reference)
        if pred == ref:
            return 1.0
        return position_credit(pred, ref) if self.partial_credit else 0.0
