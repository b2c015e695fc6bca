"""SDPO's data loop without its user simulator: positive continuations of negative sessions, judged.

SDPO (Kong et al. 2025, arXiv:2501.01821) pairs a negative session, whose assistant errs at some turn,
with a positive one sampled from the history just before that turn; the pair is kept when the new
session is the better one. The loop's ``sessions`` task runs this every iteration (``selfplay.loop.
session_play``); the steps are here, on any engine with the generator interface
(``generate(prompts, sampling) -> list[list[Completion]]``, chat-message prompts accepted):

* **One assistant turn at a time** (:func:`play_sessions`). Turn t of every session is sampled in one
  batched call whose prompts are each session's history plus everything generated and replayed so far,
  so each turn is conditioned on what came before it (the engine renders the messages with the
  policy's chat template). With ``sampling.n`` > 1 the first turn is sampled n times and each of the n
  sessions goes on on its own; every turn has its own seed, so a resumed run samples the same turns.
* **User turns replayed from the data.** The paper's GPT-4 partner answers the new turns; here the
  user turns of the negative session inside the segment are replayed unchanged, so a positive session
  differs from its negative one at the assistant turns only. Where the new assistant turn changes what
  a real user would answer, the replayed turn no longer fits: the judge sees that too.
* **The run's judge picks the better session** (:func:`judge_sessions`): the judge interface of
  ``selfplay.judges`` (rule, reward model, pairwise ranker, LLM judge, a Python callable), one group per
  session whose responses are the n played continuations and, last, the negative one cut to the same
  segment (the paper compares equal lengths). A response is the continuation's ``role: content`` lines;
  ``meta["sessions"]`` holds the same continuations as messages, for a rule that reads turns.
* **A pair per session at most** (:func:`session_pairs`): the best-scored played session against the
  negative one, kept when it scores strictly higher (by at least ``min_margin``). Ties, undecided
  scores, a played turn that came out empty and a first turn identical to the erroneous one (the
  sessions would not differ there) drop it, each counted, never silent.

The pairs are rows of the multi-turn layout (``prompt`` = history, ``chosen``/``rejected`` =
continuations of ``segment_turns`` assistant turns) in the ``PAIRS_SCHEMA`` columns, which
``train.loss.segment_turns`` trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from selfplay.generate.types import Sampling
from selfplay.judges.base import Judge, PromptGroup, prompt_text, run_judge
from selfplay.records import encode_prompt
from selfplay.tasks.formats import Messages


@dataclass(frozen=True)
class NegativeSession:
    """A session whose assistant errs at the first turn of ``continuation`` (an assistant turn)."""

    history: Messages
    continuation: Messages
    id: str = ""


@dataclass(frozen=True)
class JudgedSession:
    """One negative session, its played continuations and the judge's scores (None: undecided)."""

    negative: NegativeSession
    played: list[Messages]
    played_scores: list[float | None]
    negative_segment: Messages
    negative_score: float | None


@dataclass
class SessionPairs:
    """The kept pairs (rows of ``PAIRS_SCHEMA``) and what happened to the other sessions."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


def play_sessions(engine: Any, negatives: list[NegativeSession], sampling: Sampling, segment_turns: int
                  ) -> list[list[Messages]]:
    """For each negative session, ``sampling.n`` new continuations of ``segment_turns`` assistant turns from
    its erroneous turn: assistant turns sampled one at a time (all sessions batched per turn), the user
    turns between them replayed from the negative session. Raises, naming the session, when one lacks the
    user turns a segment of that length needs."""
    if segment_turns < 1:
        raise ValueError(f"segment_turns must be >= 1, got {segment_turns}")
    replayed = [_replayed_users(neg, i, segment_turns) for i, neg in enumerate(negatives)]
    if not negatives:
        return []
    first = engine.generate([neg.history for neg in negatives], sampling.with_(seed=turn_seed(sampling, 0)))
    branches = [(i, [{"role": "assistant", "content": c.text}]) for i, out in enumerate(first) for c in out]
    one = sampling.with_(n=1)
    for t in range(1, segment_turns):
        for i, done in branches:
            done.append(dict(replayed[i][t - 1]))
        outs = engine.generate([[*negatives[i].history, *done] for i, done in branches],
                               one.with_(seed=turn_seed(sampling, t)))
        for (_, done), out in zip(branches, outs, strict=True):
            done.append({"role": "assistant", "content": out[0].text})
    played: list[list[Messages]] = [[] for _ in negatives]
    for i, done in branches:
        played[i].append(done)
    return played


def turn_seed(sampling: Sampling, turn: int) -> int | None:
    """The sampling seed of turn ``turn`` (None for an unseeded run): each turn draws its own samples."""
    return None if sampling.seed is None else sampling.seed + 1_000_003 * turn


def _replayed_users(neg: NegativeSession, i: int, segment_turns: int) -> Messages:
    where = f"negative session {i}" + (f" ({neg.id!r})" if neg.id else "")
    if not neg.continuation or neg.continuation[0]["role"] != "assistant":
        raise ValueError(f"{where}: the continuation must start with the erroneous assistant turn")
    users = [m for m in neg.continuation if m["role"] == "user"]
    if len(users) < segment_turns - 1:
        raise ValueError(f"{where}: a segment of {segment_turns} assistant turns needs {segment_turns - 1} "
                         f"user turn(s) to replay, the session has {len(users)}")
    return users[: segment_turns - 1]


def judge_sessions(negatives: list[NegativeSession], played: list[list[Messages]], judge: Judge,
                   segment_turns: int) -> list[JudgedSession]:
    """Score every played continuation and the negative one (cut to ``segment_turns`` assistant turns) with
    ``judge``, one group per session; a continuation with an empty assistant turn is not shown to it."""
    groups, shown = [], []
    for i, (neg, sessions) in enumerate(zip(negatives, played, strict=True)):
        cut = segment(neg.continuation, segment_turns)
        keep = [j for j, s in enumerate(sessions) if all(m["content"].strip() for m in s)]
        candidates = [sessions[j] for j in keep] + [cut]
        groups.append(PromptGroup(neg.id or f"session-{i}", neg.history, [prompt_text(s) for s in candidates],
                                  meta={"sessions": candidates}))
        shown.append(keep)
    scores = run_judge(judge, groups)
    out = []
    for neg, sessions, keep, row in zip(negatives, played, shown, scores):
        by_index: dict[int, float | None] = dict(zip(keep, row[:-1]))
        out.append(JudgedSession(neg, sessions, [by_index.get(j) for j in range(len(sessions))],
                                 segment(neg.continuation, segment_turns), row[-1]))
    return out


def session_pairs(judged: list[JudgedSession], judge_name: str, iteration: int, min_margin: float = 0.0
                  ) -> SessionPairs:
    """A pair per session whose best played continuation scores strictly above the negative one (by at
    least ``min_margin``); the columns of ``PAIRS_SCHEMA``."""
    out = SessionPairs(stats={"sessions": len(judged), "played": 0, "kept": 0, "not_better": 0, "undecided": 0,
                              "empty_turn": 0, "same_first_turn": 0})
    for s in judged:
        out.stats["played"] += len(s.played)
        usable = [(score, j) for j, (score, p) in enumerate(zip(s.played_scores, s.played))
                  if score is not None and p[0]["content"].strip() != s.negative_segment[0]["content"].strip()]
        reason = _drop_reason(s, usable, min_margin)
        if reason:
            out.stats[reason] += 1
            continue
        score, j = max(usable, key=lambda x: x[0])
        out.stats["kept"] += 1
        sid = s.negative.id
        out.rows.append({"pair_id": f"{iteration}:{sid}:{j}:negative", "prompt_id": sid,
                         "prompt": encode_prompt(s.negative.history), "chosen": encode_prompt(s.played[j]),
                         "rejected": encode_prompt(s.negative_segment), "chosen_token_ids": None,
                         "rejected_token_ids": None, "chosen_score": score, "rejected_score": s.negative_score,
                         "margin": score - s.negative_score, "judge": judge_name, "policy_version": iteration,
                         "iteration": iteration, "offset": None})
    return out


def _drop_reason(s: JudgedSession, usable: list[tuple[float, int]], min_margin: float) -> str | None:
    """Why session ``s`` makes no pair (a key of the stats), or None when it makes one."""
    if not any(all(m["content"].strip() for m in p) for p in s.played):
        return "empty_turn"  # every sample ended at once: no reply to prefer
    if s.negative_score is None or not any(score is not None for score in s.played_scores):
        return "undecided"
    if not usable:
        return "same_first_turn"  # the played turn is the erroneous one: the sessions would not differ there
    if max(score for score, _ in usable) - s.negative_score <= 0 or \
            max(score for score, _ in usable) - s.negative_score < min_margin:
        return "not_better"
    return None


SESSION_DROP_HINTS = {
    "not_better": "no played session scored above the negative one (more samples per session: generation.n; "
                  "or a lower pairing.min_margin)",
    "undecided": "the judge could not decide (it returned None)",
    "empty_turn": "every played continuation had an empty assistant turn (generation.max_tokens, generation.stop)",
    "same_first_turn": "the played first turn repeated the erroneous one (generation.temperature)",
}


def session_hint(stats: dict[str, int]) -> str:
    """Why sessions made no pair, most frequent cause first, each with the recipe field to look at."""
    counts = sorted(((stats.get(r, 0), r) for r in SESSION_DROP_HINTS), key=lambda c: -c[0])
    return "; ".join(f"{n} session{'s' if n != 1 else ''} {r}: {SESSION_DROP_HINTS[r]}" for n, r in counts if n)


def segment(continuation: Messages, segment_turns: int) -> Messages:
    """The continuation up to and including its ``segment_turns``-th assistant turn (all of it if shorter)."""
    seen = 0
    for j, m in enumerate(continuation):
        seen += m["role"] == "assistant"
        if seen == segment_turns:
            return [dict(x) for x in continuation[: j + 1]]
    return [dict(x) for x in continuation]
