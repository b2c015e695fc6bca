"""A task of your own: reverse the order of a few words. The example of docs/tasks.md.

Use it with ``task: {type: python, target: "docs.examples.reverse_task:ReverseWords", kwargs: {chat: true}}``
(``module:attr`` importable from the directory you run ``selfplay`` in). It imports nothing from
selfplay: a task is anything with the four members below.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

WORDS = ["red", "green", "blue", "cat", "dog", "tree", "river", "stone", "cloud", "bread", "lamp", "door"]


@dataclass(frozen=True)
class Example:  # the fields selfplay reads: id, prompt, reference, meta
    id: str
    prompt: Any
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def is_eval(key: str) -> bool:
    """The split is a property of the problem: 10% of the hash range is held out, whatever the seed."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) < 0.1 * 16**8


class ReverseWords:
    has_verifier = True

    def __init__(self, chat: bool = True, length: int = 4) -> None:
        self.chat, self.length = chat, length

    def _examples(self, n: int, seed: int, want_eval: bool) -> list[Example]:
        rng, out, seen = random.Random(f"{want_eval}:{seed}"), [], set()
        while len(out) < n:
            words = rng.sample(WORDS, self.length)
            key = " ".join(words)  # the canonical key: what identifies the problem, not how it is worded
            if key in seen or is_eval(key) != want_eval:
                continue
            seen.add(key)
            text = f"Reverse the order of these words: {key}"
            prompt = [{"role": "user", "content": text}] if self.chat else text
            out.append(Example(f"rev-{hashlib.sha1(key.encode()).hexdigest()[:12]}", prompt,
                               " ".join(reversed(words))))
        return out

    def train_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        return self._examples(200 if n is None else n, seed, want_eval=False)

    def eval_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        return self._examples(50 if n is None else n, seed, want_eval=True)

    def score(self, example: Example, response: str) -> float:
        """In [0, 1]: the fraction of positions with the right word (1.0 only for the exact answer)."""
        want, got = example.reference.split(), response.strip().split()
        return sum(a == b for a, b in zip(want, got)) / max(len(want), len(got))
