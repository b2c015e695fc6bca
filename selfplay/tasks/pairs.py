"""Offline preference data: a file of (prompt, chosen, rejected) rows instead of generate -> judge.

Used by offline DPO (one round on a fixed data set). Rows may be strings or TRL's conversational
layouts (message lists, with or without a prompt column; see ``selfplay.tasks.formats``). Rows are
validated when the task is built and a bad row names the file, the row and the column. A seeded share
of *prompts* is held out for evaluation (their pairs are not trained on); ``pairs_table`` returns the
training pairs in the column contract of ``selfplay.pairs`` so the rest of the iteration does not know
where the pairs came from.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from selfplay.tasks.base import Example, NoVerifierError
from selfplay.tasks.dataset import read_rows
from selfplay.tasks.formats import parse_preference_row


class PairsTask:
    has_verifier = False

    def __init__(self, path: str | Path, prompt_column: str = "prompt", chosen_column: str = "chosen",
                 rejected_column: str = "rejected", eval_fraction: float = 0.05, split_seed: int = 0) -> None:
        self.path = Path(path)
        rows = read_rows(self.path)
        if not rows:
            raise ValueError(f"{self.path}: no rows")
        self.rows: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"{self.path}: row {i}: expected an object, got {type(row).__name__}")
            # string or conversational (TRL) layouts, with or without a prompt column: selfplay.tasks.formats
            prompt, chosen, rejected = parse_preference_row(row, prompt_column, chosen_column, rejected_column,
                                                            f"{self.path}: row {i}")
            self.rows.append({"id": f"{self.path.stem}-{i}", "prompt": prompt, "chosen": chosen,
                              "rejected": rejected})
        order = list(range(len(self.rows)))
        random.Random(split_seed).shuffle(order)
        n_eval = int(round(eval_fraction * len(order))) if eval_fraction > 0 else 0
        n_eval = min(max(n_eval, 1 if eval_fraction > 0 else 0), len(order) - 1)
        self._eval = sorted(order[:n_eval])
        self._train = sorted(order[n_eval:])

    def _examples(self, idx: list[int]) -> list[Example]:
        return [Example(self.rows[i]["id"], self.rows[i]["prompt"], self.rows[i]["chosen"]) for i in idx]

    def train_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        ex = self._examples(self._train)
        return ex if n is None else [ex[i] for i in sorted(random.Random(seed).sample(range(len(ex)), min(n, len(ex))))]

    def eval_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        ex = self._examples(self._eval)
        return ex if n is None else ex[:n]

    def score(self, example: Example, response: str) -> float:
        raise NoVerifierError(f"offline pairs from {self.path} have no verifier")

    def pairs_table(self, iteration: int = 0):
        import json

        import pyarrow as pa

        from selfplay.pairs.schema import PAIRS_SCHEMA

        out = []
        for i in self._train:
            r = self.rows[i]
            prompt = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])
            out.append({"pair_id": f"{iteration}:{r['id']}", "prompt_id": r["id"], "prompt": prompt,
                        "chosen": r["chosen"], "rejected": r["rejected"], "chosen_token_ids": None,
                        "rejected_token_ids": None, "chosen_score": None, "rejected_score": None,
                        "margin": None, "judge": "dataset", "policy_version": 0, "iteration": iteration})
        return pa.Table.from_pylist(out, schema=PAIRS_SCHEMA)
