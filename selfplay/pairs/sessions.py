"""SDPO's data loop without its user simulator: a positive continuation for each negative session.

SDPO (Kong et al. 2025, arXiv:2501.01821) pairs a negative session, whose assistant errs at some turn,
with a positive one sampled from the history just before that turn; a judge keeps the pair when the new
session is the better one. This module does that on any engine with the generator interface
(``generate(prompts, sampling) -> list[list[Completion]]``, chat-message prompts accepted):

* **One assistant turn at a time.** Turn t of every session is sampled in one batched call whose
  prompts are each session's history plus everything generated and replayed so far, so each turn is
  conditioned on what came before it (the engine renders the messages with the policy's chat template).
* **User turns replayed from the data.** The paper's GPT-4 partner answers the new turns; here the
  user turns of the negative session inside the segment are replayed unchanged, so a positive session
  differs from its negative one at the assistant turns only. Where the new assistant turn changes what
  a real user would answer, the replayed turn no longer fits: the judge sees that too.
* **A judge picks the better session**: any callable ``judge(history, continuation) -> float | None``
  (a rule, or a wrapper around a model judge). A pair is kept when the sampled continuation scores
  strictly above the negative one; ties and undecided scores drop it (counted, never silent).

The result is rows in the multi-turn pairs layout (``prompt`` = history, ``chosen``/``rejected`` =
continuations of ``segment_turns`` assistant turns), which ``selfplay.tasks.PairsTask`` reads from a
jsonl file and ``train.loss.segment_turns`` trains on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfplay.generate.types import Sampling
from selfplay.tasks.formats import Messages

SessionJudge = Callable[[Messages, Messages], float | None]
"""``judge(history, continuation)``: a score of the session (higher is better), or None: undecided."""


@dataclass(frozen=True)
class NegativeSession:
    """A session whose assistant errs at the first turn of ``continuation`` (an assistant turn)."""

    history: Messages
    continuation: Messages
    id: str = ""


@dataclass
class SessionPairs:
    """The kept pairs (rows of the multi-turn layout) and what happened to the others."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


def sample_positive(engine: Any, negatives: list[NegativeSession], sampling: Sampling, segment_turns: int
                    ) -> list[Messages]:
    """For each negative session, a new continuation of ``segment_turns`` assistant turns from its
    erroneous turn: assistant turns sampled one at a time (all sessions batched per turn), the user turns
    between them replayed from the negative session. Raises, naming the session, when one lacks the
    user turns a segment of that length needs."""
    if segment_turns < 1:
        raise ValueError(f"segment_turns must be >= 1, got {segment_turns}")
    replayed = []
    for i, neg in enumerate(negatives):
        where = f"negative session {i}" + (f" ({neg.id!r})" if neg.id else "")
        if not neg.continuation or neg.continuation[0]["role"] != "assistant":
            raise ValueError(f"{where}: the continuation must start with the erroneous assistant turn")
        users = [m for m in neg.continuation if m["role"] == "user"]
        if len(users) < segment_turns - 1:
            raise ValueError(f"{where}: a segment of {segment_turns} assistant turns needs {segment_turns - 1} "
                             f"user turn(s) to replay, the session has {len(users)}")
        replayed.append(users[: segment_turns - 1])
    sessions: list[Messages] = [[] for _ in negatives]
    one = sampling.with_(n=1)
    for t in range(segment_turns):
        prompts = [[*neg.history, *done] for neg, done in zip(negatives, sessions)]
        outs = engine.generate(prompts, one)
        for done, out, users in zip(sessions, outs, replayed):
            done.append({"role": "assistant", "content": out[0].text})
            if t < segment_turns - 1:
                done.append(dict(users[t]))
    return sessions


def judge_sessions(negatives: list[NegativeSession], positives: list[Messages], judge: SessionJudge,
                   segment_turns: int) -> SessionPairs:
    """Keep each (sampled, negative) pair whose sampled session the judge scores strictly higher; the
    negative side is cut to the same ``segment_turns`` assistant turns (the paper's equal lengths)."""
    out = SessionPairs(stats={"sessions": len(negatives), "kept": 0, "not_better": 0, "undecided": 0,
                              "empty_turn": 0})
    for i, (neg, pos) in enumerate(zip(negatives, positives, strict=True)):
        negative = _cut(neg.continuation, segment_turns)
        if any(m["role"] == "assistant" and not m["content"].strip() for m in pos):
            out.stats["empty_turn"] += 1  # a sample that ended at once: no reply to prefer
            continue
        good, bad = judge(neg.history, pos), judge(neg.history, negative)
        if good is None or bad is None:
            out.stats["undecided"] += 1
        elif good > bad:
            out.stats["kept"] += 1
            out.rows.append({"id": neg.id or f"session-{i}", "prompt": list(neg.history), "chosen": pos,
                             "rejected": negative, "chosen_score": float(good), "rejected_score": float(bad)})
        else:
            out.stats["not_better"] += 1
    return out


def positive_pairs(engine: Any, negatives: list[NegativeSession], sampling: Sampling, judge: SessionJudge,
                   segment_turns: int) -> SessionPairs:
    """:func:`sample_positive` then :func:`judge_sessions`: SDPO's pairs from negative sessions."""
    return judge_sessions(negatives, sample_positive(engine, negatives, sampling, segment_turns), judge,
                          segment_turns)


def _cut(continuation: Messages, segment_turns: int) -> Messages:
    """The continuation up to and including its ``segment_turns``-th assistant turn (all of it if shorter)."""
    seen = 0
    for j, m in enumerate(continuation):
        seen += m["role"] == "assistant"
        if seen == segment_turns:
            return [dict(x) for x in continuation[: j + 1]]
    return [dict(x) for x in continuation]
