"""What a task is: a source of prompts (``Example``) with seeded, disjoint train/eval splits and,
optionally, a verifier that scores a response.

``Task`` is a ``runtime_checkable`` Protocol rather than a base class so a user's task (loaded with
``build_task("python", target="mymod:MyTask")``) needs no import from this project; ``check_task``
names any missing member.

``GeneratedTask`` is the shared machinery of the synthetic tasks (arithmetic, sorting). Choices:

* Disjoint splits for *any* pair of seeds: a problem belongs to eval iff the SHA-1 of its canonical key
  falls in the first ``EVAL_BUCKET`` (10%) of the hash range; train samples reject those, eval samples
  keep only those. The split is a property of the problem, not of the seed.
* The canonical key names the *problem*, not its wording: ``37+48=`` and ``48+37=`` share the key
  ``37+48``, so a held-out problem's commuted twin is never trained on. Prompt-file tasks (datasets,
  offline pairs) split by ``prompt_key``: the prompt text with Unicode, case and whitespace normalised,
  so a prompt repeated in a file (or in a separate eval file) is on one side only.
* Stable ids: ``{prefix}-{sha1(key)[:12]}``, so the same problem has the same id in every call.
* ``n=None`` means the task's default size (``train_size`` / ``eval_size``): generated spaces are large.
* Examples within one call are distinct; if the space cannot supply ``n`` of them, a ``ValueError``.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Messages = list[dict[str, str]]
EVAL_BUCKET = 0.1


@dataclass(frozen=True)
class Example:
    """One prompt. ``prompt`` is plain text or chat messages (``[{"role": ..., "content": ...}]``)."""

    id: str
    prompt: str | Messages
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class NoVerifierError(RuntimeError):
    """Raised by ``Task.score`` of a task without a verifier (use a judge instead)."""


@runtime_checkable
class Task(Protocol):
    """Prompts with seeded, disjoint train/eval splits and an optional verifier."""

    has_verifier: bool

    def train_examples(self, n: int | None = None, seed: int = 0) -> list[Example]: ...

    def eval_examples(self, n: int | None = None, seed: int = 0) -> list[Example]: ...

    def score(self, example: Example, response: str) -> float:
        """Verifier score in [0, 1]; raises ``NoVerifierError`` when ``has_verifier`` is False."""
        ...


TASK_MEMBERS = ("has_verifier", "train_examples", "eval_examples", "score")


def check_task(obj: Any, origin: str) -> Any:
    """Return ``obj`` if it implements the Task API; else a ``TypeError`` naming ``origin`` and what lacks."""
    missing = [m for m in TASK_MEMBERS if not hasattr(obj, m)]
    not_callable = [m for m in TASK_MEMBERS[1:] if hasattr(obj, m) and not callable(getattr(obj, m))]
    if missing or not_callable:
        problems = [f"missing {m!r}" for m in missing] + [f"{m!r} is not callable" for m in not_callable]
        raise TypeError(f"{origin} returned {type(obj).__name__!r}, not a Task: {'; '.join(problems)} "
                        f"(a Task has {', '.join(TASK_MEMBERS)})")
    return obj


def prompt_key(prompt: str | Messages) -> str:
    """Canonical form of a prompt for splitting: NFKC, case-folded, whitespace collapsed; chat messages are
    joined as ``role: content`` lines. Two prompts with the same key are one problem."""
    import unicodedata

    if isinstance(prompt, str):
        parts = [prompt]
    else:
        parts = [f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt]
    norm = (" ".join(unicodedata.normalize("NFKC", p).casefold().split()) for p in parts)
    return "\n".join(norm)


def held_out_keys(keys: list[str], eval_fraction: float, split_seed: int) -> set[str]:
    """A seeded ``eval_fraction`` of the *distinct* keys (at least one when the fraction is > 0 and there
    are two or more; never all of them)."""
    distinct = list(dict.fromkeys(keys))
    if eval_fraction <= 0 or len(distinct) < 2:
        return set()
    random.Random(split_seed).shuffle(distinct)
    n_eval = min(max(1, round(eval_fraction * len(distinct))), len(distinct) - 1)
    return set(distinct[:n_eval])


def first_of_each(keys: list[str], wanted: set[str]) -> list[int]:
    """Indices of the first occurrence of each key in ``wanted``, in order: one eval prompt per held-out
    prompt, however many rows repeat it (a repeated prompt would count twice in the score)."""
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in wanted:
            first.setdefault(key, i)
    return sorted(first.values())


def stable_hash(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def is_eval_key(key: str) -> bool:
    """True iff the problem with canonical ``key`` belongs to the eval split."""
    return int(stable_hash(key)[:8], 16) < EVAL_BUCKET * 16**8


@dataclass(frozen=True)
class Problem:
    """A generated problem: ``key`` identifies it (split and id), ``text`` is the prompt text."""

    key: str
    text: str
    reference: str
    meta: dict[str, Any] = field(default_factory=dict)


class GeneratedTask(ABC):
    """Base of the synthetic tasks: subclasses implement ``sample`` and ``score``."""

    has_verifier = True
    id_prefix = "task"

    def __init__(self, *, chat: bool = False, train_size: int = 1000, eval_size: int = 200) -> None:
        self.chat = chat
        self.train_size = train_size
        self.eval_size = eval_size

    @abstractmethod
    def sample(self, rng: random.Random) -> Problem:
        """Draw one problem using only ``rng``."""

    @abstractmethod
    def score(self, example: Example, response: str) -> float: ...

    def train_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        return self._examples("train", self.train_size if n is None else n, seed)

    def eval_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        return self._examples("eval", self.eval_size if n is None else n, seed)

    def _examples(self, split: str, n: int, seed: int) -> list[Example]:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"{type(self).__name__}:{split}:{seed}")
        want_eval = split == "eval"
        seen: set[str] = set()
        out: list[Example] = []
        for _ in range(100 * n + 1000):
            if len(out) == n:
                break
            problem = self.sample(rng)
            if problem.key in seen or is_eval_key(problem.key) != want_eval:
                continue
            seen.add(problem.key)
            prompt: str | Messages = problem.text
            if self.chat:
                prompt = [{"role": "user", "content": problem.text}]
            example_id = f"{self.id_prefix}-{stable_hash(problem.key)[:12]}"
            meta = {"split": split, "key": problem.key, **problem.meta}
            out.append(Example(example_id, prompt, problem.reference, meta))
        if len(out) < n:
            raise ValueError(f"{type(self).__name__}: found only {len(out)} distinct {split} problems, "
                             f"asked for {n}; use a harder level / wider ranges or a smaller n")
        return out
