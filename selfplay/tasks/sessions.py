"""Negative sessions for SDPO's self-play: a file of (history, negative continuation) rows.

SDPO (Kong et al. 2025, arXiv:2501.01821) starts from sessions whose assistant errs at some turn. A row
here is one such session cut at its erroneous turn: ``prompt``, the history before it (chat messages
ending with a user turn), and ``rejected``, the negative continuation, which opens with the erroneous
assistant turn and alternates user and assistant turns after it. Each iteration the policy plays a new
continuation from the erroneous turn, replaying the user turns of ``rejected`` (``selfplay.pairs.sessions``),
and the judge decides which session is better; the names are TRL's (``prompt``/``rejected`` as in its
conversational preference layout), since the rows are the rejected half of the pairs they become.

Every row is checked when the task is built, and a bad row gets one message that names the file, the
0-based row and the column: a history that does not end with a user turn, a continuation that does not
open with an assistant turn, roles out of order (two turns of one role in a row, a system message inside
the session), an empty assistant turn, and a continuation with fewer assistant turns than the segment
(``train.loss.segment_turns``) needs. As for offline pairs, a seeded share of the distinct histories is
held out; their histories are the evaluation prompts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from selfplay.tasks.base import Example, NoVerifierError, first_of_each, held_out_keys, prompt_key
from selfplay.tasks.dataset import read_rows
from selfplay.tasks.formats import assistant_turns, check_messages, check_turn_order


class SessionsTask:
    """Negative sessions; an :class:`Example` per session, its ``meta["rejected"]`` the negative continuation."""

    has_verifier = False

    def __init__(self, path: str | Path, segment_turns: int, prompt_column: str = "prompt",
                 rejected_column: str = "rejected", eval_fraction: float = 0.1, split_seed: int = 0) -> None:
        self.path = Path(path)
        self.segment_turns = segment_turns
        rows = read_rows(self.path)
        if not rows:
            raise ValueError(f"{self.path}: no rows")
        self.sessions = [self._parse(row, f"{self.path}: row {i}", prompt_column, rejected_column, i)
                         for i, row in enumerate(rows)]
        keys = [prompt_key(s.prompt) for s in self.sessions]
        held_out = held_out_keys(keys, eval_fraction, split_seed)
        self._train = [i for i, k in enumerate(keys) if k not in held_out]
        self._eval = first_of_each(keys, held_out)

    def _parse(self, row: Any, where: str, prompt_column: str, rejected_column: str, i: int) -> Example:
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
        for col in (prompt_column, rejected_column):
            if col not in row:
                raise ValueError(f"{where}: column {col!r} is missing (row has {sorted(row)})")
        history = row[prompt_column]
        if isinstance(history, str):  # a plain-text prompt is one user turn
            history = [{"role": "user", "content": history}]
        history = check_messages(history, f"{where}: column {prompt_column!r}")
        if history[-1]["role"] != "user":
            raise ValueError(f"{where}: column {prompt_column!r}: roles out of order: the history must end with "
                             f"the user turn the erroneous reply answers, got {history[-1]['role']!r} last")
        check_turn_order(history, f"{where}: column {prompt_column!r}", 0)
        negative = check_messages(row[rejected_column], f"{where}: column {rejected_column!r}")
        if negative[0]["role"] != "assistant":
            raise ValueError(f"{where}: column {rejected_column!r}: roles out of order: the negative continuation "
                             f"must open with the erroneous assistant turn, got {negative[0]['role']!r}")
        check_turn_order([history[-1], *negative], f"{where}: column {rejected_column!r}", -1)
        if assistant_turns(negative) < self.segment_turns:
            raise ValueError(f"{where}: column {rejected_column!r}: a segment longer than the session: "
                             f"train.loss.segment_turns={self.segment_turns}, but the negative continuation has "
                             f"{assistant_turns(negative)} assistant turn(s)")
        return Example(f"{self.path.stem}-{i}", history, None, {"rejected": negative})

    def train_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        ex = [self.sessions[i] for i in self._train]
        return ex if n is None else [ex[i] for i in sorted(random.Random(seed).sample(range(len(ex)), min(n, len(ex))))]

    def eval_examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        ex = [Example(self.sessions[i].id, self.sessions[i].prompt) for i in self._eval]
        return ex if n is None else ex[:n]

    def score(self, example: Example, response: str) -> float:
        raise NoVerifierError(f"negative sessions from {self.path} have no verifier; the judge compares sessions")
