"""reasoning-gym tasks: procedural problems and their own scorers (``pip install -e '.[tasks]'``).

``ReasoningGymTask(name, config)`` draws problems from ``reasoning_gym.create_dataset(name, seed=...,
size=..., **config)`` (entries with ``question``, ``answer`` and ``metadata``) and scores a response
with that dataset's own ``score_answer(answer, entry)``, whose partial credit is kept (a score in [0, 1]).

Choices:

* Held out means unseen. Train and eval are drawn from different seeds far apart (many generators seed
  entry ``i`` with ``seed + i``, so neighbouring seeds would share entries), and a training problem whose
  question (or rendered prompt) equals an eval one, after Unicode, case and whitespace normalisation,
  is dropped (``dropped_as_eval`` counts them); repeated questions within a split are kept once.
* ``prompt_template`` replaces reasoning-gym's instructions, which are long for a tiny model: a
  ``str.format`` template over ``question`` and ``metadata`` (``"{metadata[expression]} ="``), checked on
  the first entry when the task is built (a missing key is named with the keys there are).
* The response's answer is extracted first (:mod:`selfplay.tasks.answers`, ``auto`` by default:
  ``<answer>`` tags, ``\\boxed{}``, a marker, else the whole text), because ``score_answer`` gives
  partial credit to a response that merely contains the answer.
* ``score_answer`` can raise on a malformed answer (``prime_factorization`` does): such an answer
  scores 0 and is counted (``counts``), as the dataset graders do; so does a score outside [0, 1].
* The reference is the entry's ``answer`` (the warm start trains on it); ids are
  ``rg-{name}-{sha1(question)[:12]}``, so a problem has one id whatever its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from selfplay.tasks.answers import DEFAULT_MARKERS, EXTRACTORS, extract
from selfplay.tasks.base import Example, prompt_key, stable_hash
from selfplay.tasks.dataset import take
from selfplay.tasks.grading import GradeCounts

EVAL_SEED_OFFSET = 1 << 40  # eval entries are drawn from seed + this: far from any train index range


class ReasoningGymTask:
    """Problems of one reasoning-gym dataset, scored by its ``score_answer`` (see the module docstring)."""

    has_verifier = True

    def __init__(self, name: str, config: dict[str, Any] | None = None, train_size: int = 1000,
                 eval_size: int = 200, seed: int = 0, prompt_template: str | None = None, chat: bool = False,
                 extract: str = "auto", markers: Sequence[str] = DEFAULT_MARKERS) -> None:
        try:
            import reasoning_gym
        except ImportError:
            raise ImportError("task type 'reasoning_gym' needs the reasoning-gym package: "
                              "pip install -e '.[tasks]'") from None
        if extract not in EXTRACTORS:
            raise ValueError(f"reasoning_gym task: extract {extract!r} is not one of {EXTRACTORS}")
        self.name, self.chat, self.prompt_template = name, chat, prompt_template
        self.extract, self.markers = extract, tuple(markers)
        self.counts = GradeCounts()
        config = dict(config or {})
        for reserved in ("seed", "size"):
            if reserved in config:
                raise ValueError(f"reasoning_gym task {name!r}: config.{reserved} is set by the task "
                                 "(train_size/eval_size and the run's seed); remove it")
        self._datasets: dict[str, Any] = {}
        # eval draws a margin of extra entries, so repeats still leave ``eval_size`` distinct problems
        sizes = {"train": train_size, "eval": eval_size + eval_size // 2 + 16}
        self.eval_size = eval_size
        for split, split_seed in (("train", seed), ("eval", seed + EVAL_SEED_OFFSET)):
            size = sizes[split]
            try:
                self._datasets[split] = reasoning_gym.create_dataset(name, seed=split_seed, size=size, **config)
            except Exception as exc:  # an unknown name or config key: name the task and the cause
                raise ValueError(f"reasoning_gym task {name!r} with config {config}: {type(exc).__name__}: "
                                 f"{exc}") from None
        self._entries: dict[str, tuple[str, dict[str, Any]]] = {}
        self._eval = self._examples("eval", set())
        eval_keys = {key for ex in self._eval for key in (ex.meta["question_key"], prompt_key(ex.prompt))}
        self._train = self._examples("train", eval_keys)
        if not self._train:
            raise ValueError(f"reasoning_gym task {name!r}: no training problems are left after removing the "
                             "eval ones; widen its config")

    # -- the Task API -----------------------------------------------------------------------------------
    def train_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        return take(self._train, n, seed, f"reasoning_gym {self.name} (train)")

    def eval_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        return take(self._eval, n, seed, f"reasoning_gym {self.name} (eval)")

    def score(self, example: Example, response: str) -> float:
        if example.id not in self._entries:
            raise ValueError(f"reasoning_gym {self.name}: example {example.id!r} is not one of this task's")
        split, entry = self._entries[example.id]
        answer = extract(response, self.extract, self.markers)
        if answer is None:
            return 0.0
        try:
            value = float(self._datasets[split].score_answer(answer, entry))
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"score_answer returned {value}, outside [0, 1]")
            return value
        except Exception as exc:  # noqa: BLE001  (a malformed answer must not end a run)
            self.counts.failed(exc)
            return 0.0

    def extract_answer(self, response: str) -> str | None:
        """The answer ``response`` votes for in ``maj@k``: what ``score`` hands to ``score_answer``."""
        answer = extract(response, self.extract, self.markers)
        return None if answer is None else " ".join(answer.split())

    def grader_counts(self) -> dict[str, int]:
        """Answers ``score_answer`` raised on so far (the verifier judge records the count per iteration)."""
        return self.counts.as_dict()

    # -- building -----------------------------------------------------------------------------------------
    def _examples(self, split: str, excluded: set[str]) -> list[Example]:
        dataset = self._datasets[split]
        out: list[Example] = []
        seen: set[str] = set()
        dropped = 0
        for i in range(len(dataset)):
            entry = dataset[i]
            question = str(entry["question"])
            prompt = self._render(entry, i)
            keys = (prompt_key(question), prompt_key(prompt))
            if keys[0] in seen:
                continue
            if split == "eval" and len(out) == self.eval_size:
                break
            seen.add(keys[0])
            if excluded and (keys[0] in excluded or keys[1] in excluded):
                dropped += 1
                continue
            example_id = f"rg-{self.name}-{stable_hash(question)[:12]}"
            answer = entry.get("answer")
            reference = None if answer is None else str(answer)
            meta = {"split": split, "index": i, "dataset": self.name, "question_key": keys[0]}
            self._entries[example_id] = (split, entry)
            out.append(Example(example_id, [{"role": "user", "content": prompt}] if self.chat else prompt,
                               reference, meta))
        if split == "train":
            self.dropped_as_eval = dropped
        return out

    def _render(self, entry: dict[str, Any], i: int) -> str:
        if self.prompt_template is None:
            return str(entry["question"])
        try:
            return self.prompt_template.format(question=entry["question"], metadata=entry.get("metadata", {}))
        except (KeyError, IndexError, AttributeError) as exc:
            keys = sorted(entry.get("metadata", {}))
            raise ValueError(f"reasoning_gym {self.name}: prompt_template {self.prompt_template!r} fails on entry "
                             f"{i}: {type(exc).__name__}: {exc}; it may use {{question}} and "
                             f"{{metadata[...]}} with the keys {keys}") from None

