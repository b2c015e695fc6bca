"""Offline preference data: a file of (prompt, chosen, rejected) rows instead of generate -> judge.

Used by offline DPO (one round on a fixed data set). Rows may be strings or TRL's conversational
layouts (message lists, with or without a prompt column; see ``selfplay.tasks.formats``). Rows are
validated when the task is built and a bad row names the file, the row and the column. A seeded share
of the distinct *prompts* (compared by ``prompt_key``: Unicode, case and whitespace normalised) is held
out for evaluation: none of their pairs is trained on, and each is one eval prompt; ``pairs_table``
returns the training pairs in the column contract of ``selfplay.pairs`` so the rest of the iteration
does not know where the pairs came from.

sDPO (Kim et al. 2024, "sDPO: Don't Use Your Data All at Once", arXiv:2403.19270): with ``chunks`` set,
the training pairs are cut into that many chunks of near-equal size, in file order, and iteration k
gets chunk k only; with ``train.reference: previous`` each chunk is trained against the previous step's
model. File order, not a shuffle: the paper orders its chunks easier first (by source data set), so a
curriculum is expressed by ordering the file.

Multi-turn rows (SDPO, Kong et al. 2025; see ``selfplay.tasks.formats``): a side that continues the
shared history with several turns is stored in the table as the JSON encoding of its messages, as chat
prompts are (``selfplay.records``); the learner encodes it turn by turn and scores the assistant turns
only. With ``segment_turns`` (the recipe's ``train.loss.segment_turns``) every row is checked here, before
any training, to hold that many assistant turns on both sides from the first difference. An eval prompt
of a multi-turn row is the shared history, and its reference the chosen side's first reply.

Not to be confused: sDPO (stepwise, ``chunks``) and SDPO (segment-level, ``segment_turns``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa

from selfplay.records import PAIRS_SCHEMA, encode_prompt
from selfplay.tasks.base import Example, NoVerifierError, first_of_each, held_out_keys, prompt_key
from selfplay.tasks.dataset import read_rows
from selfplay.tasks.formats import assistant_turns, parse_preference_row


class PairsTask:
    has_verifier = False

    def __init__(self, path: str | Path, prompt_column: str = "prompt", chosen_column: str = "chosen",
                 rejected_column: str = "rejected", eval_fraction: float = 0.05, split_seed: int = 0,
                 chunks: int | None = None, segment_turns: int | None = None) -> None:
        self.path = Path(path)
        self.chunks = chunks
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
            if segment_turns is not None:
                for col, side in ((chosen_column, chosen), (rejected_column, rejected)):
                    if assistant_turns(side) < segment_turns:
                        raise ValueError(f"{self.path}: row {i}: a segment longer than the session: "
                                         f"train.loss.segment_turns={segment_turns}, but column {col!r} has "
                                         f"{assistant_turns(side)} assistant turn(s) from the first difference")
            self.rows.append({"id": f"{self.path.stem}-{i}", "prompt": prompt, "chosen": chosen,
                              "rejected": rejected})
        keys = [prompt_key(r["prompt"]) for r in self.rows]
        held_out = held_out_keys(keys, eval_fraction, split_seed)
        self._train = [i for i, k in enumerate(keys) if k not in held_out]
        self._eval = first_of_each(keys, held_out)  # one eval prompt per held-out prompt, however many pairs

    def _examples(self, idx: list[int]) -> list[Example]:
        return [Example(self.rows[i]["id"], self.rows[i]["prompt"], _first_reply(self.rows[i]["chosen"]))
                for i in idx]

    def train_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        ex = self._examples(self._train)
        return ex if n is None else [ex[i] for i in sorted(random.Random(seed).sample(range(len(ex)), min(n, len(ex))))]

    def eval_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        ex = self._examples(self._eval)
        return ex if n is None else ex[:n]

    def score(self, example: Example, response: str) -> float:
        raise NoVerifierError(f"offline pairs from {self.path} have no verifier")

    def chunk_rows(self, iteration: int) -> list[int]:
        """Rows of the training pairs iteration ``iteration`` trains on: all, or sDPO's chunk ``iteration``."""
        if self.chunks is None:
            return list(self._train)
        if len(self._train) < self.chunks:
            raise ValueError(f"{self.path}: {len(self._train)} training pairs cannot make task.chunks={self.chunks}")
        if not 0 <= iteration < self.chunks:
            raise ValueError(f"{self.path}: iteration {iteration} has no sDPO chunk (task.chunks={self.chunks})")
        bounds = [round(j * len(self._train) / self.chunks) for j in range(self.chunks + 1)]
        return list(self._train[bounds[iteration] : bounds[iteration + 1]])

    def pairs_table(self, iteration: int = 0) -> pa.Table:
        out = []
        for i in self.chunk_rows(iteration):
            r = self.rows[i]
            prompt = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])
            out.append({"pair_id": f"{iteration}:{r['id']}", "prompt_id": r["id"], "prompt": prompt,
                        "chosen": encode_prompt(r["chosen"]), "rejected": encode_prompt(r["rejected"]),
                        "chosen_token_ids": None,
                        "rejected_token_ids": None, "chosen_score": None, "rejected_score": None,
                        "margin": None, "judge": "dataset", "policy_version": 0, "iteration": iteration,
                        "offset": None})
        return pa.Table.from_pylist(out, schema=PAIRS_SCHEMA)


def _first_reply(side: str | list[dict[str, str]]) -> str:
    """The text of a side's first assistant turn (the whole side when it is one reply)."""
    return side if isinstance(side, str) else side[0]["content"]
