"""Prompts from a real dataset: a ``.parquet`` / ``.jsonl`` file or a ``datasets`` ``save_to_disk`` folder.

The prompt column holds plain text or chat messages (``[{"role": ..., "content": ...}]``); an optional
reference column holds strings (or nulls). Without a ``grader`` there is no verifier: ``has_verifier`` is
False and ``score`` raises ``NoVerifierError`` - pair such a task with a judge. With one
(:mod:`selfplay.tasks.graders`: ``exact``, ``numeric``, ``regex``, ``math``) the reference column is the
verifier: ``score`` extracts the response's answer and the reference's the same way and compares them.

Choices:

* A chat prompt that ends with an assistant message (the SFT ``messages`` layout) is split: the
  messages before it are the prompt and that reply is the reference, unless ``reference_column`` is set.
* Every row is validated when the task is built, so a bad file fails before any generation; the
  ``ValueError`` names the file, the 0-based row index and the column. A row without the reference
  column has no reference (jsonl rows may omit it), but a reference column that no row has is an error.
* Eval is ``eval_path`` (a separate file), or ``eval_split`` of the same ``DatasetDict``, or else a
  held-out ``eval_fraction`` of the distinct *prompts* chosen by a permutation seeded with ``split_seed``
  (at least one when the fraction is > 0). Prompts are compared by ``prompt_key`` (Unicode, case and
  whitespace normalised), so every row of a repeated prompt lands on the same side; an eval prompt is
  kept once, and a training row that repeats an eval prompt (also from a separate eval file) is dropped
  with a warning (``dropped_as_eval`` counts them). The split never depends on the ``seed`` given to
  ``train_examples``.
* ``train_examples(n, seed)``: ``n=None`` is every row in file order; otherwise a ``seed``-ed sample of
  ``n`` rows, kept in file order. Asking for more rows than the split has is an error.
* With a grader, every row (train and eval) needs a reference the grader can read; one it cannot (no
  ``#### answer``, no number, nothing math-verify parses) is an error when the task is built, naming the
  file and the row. The warm start still trains on the whole reference (GSM8K's worked solution).
  ``grader_counts()`` gives the answers the grader failed on so far (raised or timed out: scored 0).
* Ids: the ``id_column`` value when given (must be unique), else ``"{file stem}-{row}"`` (a folder:
  ``"{name}.{split}-{row}"``; ``.eval`` is added when the eval source would repeat the prefix). Other columns
  are kept in ``Example.meta`` (with ``source`` and ``row``) for judges that need them.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

from selfplay.tasks.base import Example, NoVerifierError, first_of_each, held_out_keys, prompt_key
from selfplay.tasks.formats import split_conversation
from selfplay.tasks.graders import Grader, build_grader

ROLES = ("system", "user", "assistant")


def read_rows(path: Path, split: str | None = None) -> list[Any]:
    """Rows of a ``.parquet`` / ``.jsonl`` file or a ``save_to_disk`` folder, as Python objects."""
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise ValueError(f"{path} is a DatasetDict with splits {sorted(ds)}; set split= to one")
            ds = ds[split]
        return ds.to_list()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: row {len(rows)} (line {lineno}) is not valid JSON: {exc}") from exc
        return rows
    raise ValueError(f"dataset {path}: unsupported format; use .parquet, .jsonl or a save_to_disk folder")


class DatasetTask:
    """Prompts (and optional references) from a dataset file; a verifier when a ``grader`` is given."""

    has_verifier = False

    def __init__(
        self,
        path: str | Path,
        prompt_column: str = "prompt",
        reference_column: str | None = None,
        id_column: str | None = None,
        eval_path: str | Path | None = None,
        eval_fraction: float = 0.1,
        split_seed: int = 0,
        split: str = "train",
        eval_split: str | None = None,
        grader: Grader | dict[str, Any] | None = None,
    ) -> None:
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        if isinstance(grader, dict):
            grader = build_grader(**grader)
        self.grader = grader
        self.has_verifier = grader is not None
        self.path = Path(path)
        self.columns = (prompt_column, reference_column, id_column)
        train = self._load(self.path, split, _tag(self.path, split))
        if eval_path is not None or eval_split is not None:
            eval_source = Path(eval_path) if eval_path is not None else self.path
            eval_name = eval_split or split
            tag = _tag(eval_source, eval_name)
            tag = f"{tag}.eval" if tag == _tag(self.path, split) else tag
            self._train, self._eval = train, self._load(eval_source, eval_name, tag)
        else:
            keys = [prompt_key(e.prompt) for e in train]
            held_out = held_out_keys(keys, eval_fraction, split_seed)
            self._train = [e for e, key in zip(train, keys) if key not in held_out]
            self._eval = [train[i] for i in first_of_each(keys, held_out)]
        # Held out means unseen: a training row whose prompt (normalised) is an eval prompt is dropped.
        eval_keys = {prompt_key(e.prompt) for e in self._eval}
        kept = [e for e in self._train if prompt_key(e.prompt) not in eval_keys]
        self.dropped_as_eval = len(self._train) - len(kept)
        if self.dropped_as_eval:
            warnings.warn(f"{self.path}: {self.dropped_as_eval} training rows repeat an eval prompt and are "
                          "left out of training", stacklevel=2)
        self._train = kept
        if not self._train:
            raise ValueError(f"{self.path}: no training rows are left after holding out the eval prompts")
        overlap = {e.id for e in self._train} & {e.id for e in self._eval}
        if overlap:
            raise ValueError(f"{self.path}: ids appear in both train and eval: {sorted(overlap)[:5]}")
        if self.grader is not None:
            self._check_references(self._train + self._eval)

    def train_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        return take(self._train, n, seed, f"{self.path} (train)")

    def eval_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        return take(self._eval, n, seed, f"{self.path} (eval)")

    def score(self, example: Example, response: str) -> float:
        if self.grader is None:
            raise NoVerifierError(
                f"dataset task {self.path} has no verifier (has_verifier=False); "
                "configure a judge to score its responses, or give the task a grader"
            )
        if example.reference is None:
            raise ValueError(f"example {example.id} has no reference to grade against")
        return self.grader.score(response, example.reference)

    def extract_answer(self, response: str) -> str | None:
        """The answer ``response`` votes for in ``maj@k``: the grader's normalised answer (the stripped
        text without a grader)."""
        return self.grader.vote_key(response) if self.grader is not None else response.strip()

    def grader_counts(self) -> dict[str, int]:
        """Answers the grader failed on so far (raised or timed out, each scored 0)."""
        return self.grader.counts.as_dict() if self.grader is not None else {}

    def _check_references(self, examples: list[Example]) -> None:
        """Every row's reference must be one the grader can read; the first bad one is named."""
        column = self.columns[1] or "the assistant reply"
        for e in examples:
            where = f"{e.meta.get('source', self.path)}: row {e.meta.get('row', '?')}"
            if e.reference is None:
                raise ValueError(f"{where}: no reference in column {column!r}; the {self.grader.kind} grader "
                                 "needs one on every row")
            try:
                self.grader.check_reference(e.reference)
            except ValueError as exc:
                raise ValueError(f"{where}: column {column!r}: the {self.grader.kind} grader cannot read this "
                                 f"reference: {exc}") from None

    def _load(self, path: Path, split: str | None, tag: str) -> list[Example]:
        prompt_col, ref_col, id_col = self.columns
        examples, seen, has_ref = [], {}, False
        for i, row in enumerate(read_rows(path, split)):
            if not isinstance(row, dict):
                raise ValueError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
            for col in (prompt_col, id_col):
                if col is not None and col not in row:
                    raise ValueError(f"{path}: row {i}: column {col!r} is missing (row has {sorted(row)})")
            prompt = _check_prompt(row[prompt_col], path, i, prompt_col)
            has_ref = has_ref or (ref_col in row)
            reference = row.get(ref_col) if ref_col else None
            if ref_col is None and isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
                # an SFT-layout conversation: the last assistant reply is the reference (formats.py)
                prompt, reference = split_conversation(prompt, f"{path}: row {i}: column {prompt_col!r}")
            if reference is not None and not isinstance(reference, str):
                raise ValueError(f"{path}: row {i}: column {ref_col!r} must be a string or null, "
                                 f"got {type(reference).__name__}")
            example_id = f"{tag}-{i}" if id_col is None else _check_id(row[id_col], path, i, id_col)
            if example_id in seen:
                raise ValueError(
                    f"{path}: row {i}: column {id_col!r}: id {example_id!r} repeats row {seen[example_id]}"
                )
            seen[example_id] = i
            meta = {k: v for k, v in row.items() if k not in (prompt_col, ref_col, id_col)}
            examples.append(Example(example_id, prompt, reference, {"source": str(path), "row": i, **meta}))
        if not examples:
            raise ValueError(f"dataset {path} has no rows")
        if ref_col and not has_ref:
            raise ValueError(f"{path}: column {ref_col!r} (reference_column) is in no row")
        return examples


def _tag(path: Path, split: str) -> str:
    """Prefix of default ids: the file stem, or ``{folder}.{split}`` for a ``save_to_disk`` folder."""
    return f"{path.name}.{split}" if path.is_dir() else path.stem


def _check_prompt(value: Any, path: Path, i: int, col: str) -> str | list[dict[str, str]]:
    where = f"{path}: row {i}: column {col!r}"
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: empty prompt")
        return value
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"{where}: empty list of chat messages")
        messages = []
        for j, msg in enumerate(value):
            ok = isinstance(msg, dict) and msg.get("role") in ROLES and isinstance(msg.get("content"), str)
            if not ok:
                raise ValueError(f"{where}: message {j} must be {{'role': one of {ROLES}, 'content': str}}, "
                                 f"got {msg!r}")
            messages.append({k: v for k, v in msg.items() if v is not None})
        if not any(m["content"].strip() for m in messages):
            raise ValueError(f"{where}: empty prompt (all messages have empty content)")
        return messages
    raise ValueError(f"{where}: must be a string or a list of chat messages, got {type(value).__name__}")


def _check_id(value: Any, path: Path, i: int, col: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValueError(f"{path}: row {i}: column {col!r} must be a non-empty string or int, got {value!r}")
    return str(value)


def take(examples: list[Example], n: int | None, seed: int, what: str) -> list[Example]:
    """Every example (``n=None``) or a ``seed``-ed sample of ``n`` of them in their order; more than there
    are is an error naming ``what``."""
    if n is None:
        return list(examples)
    if not 0 <= n <= len(examples):
        raise ValueError(f"{what} has {len(examples)} examples; cannot take n={n}")
    chosen = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in chosen]
