"""The self-play stages of a ``sessions`` task: SDPO's data loop inside the normal iteration.

With ``task.type: sessions`` an iteration is play -> judge -> pairs -> reference -> train -> export ->
sync, the first three replacing generate -> judge -> pairs under the same stage names (so status,
resume and the manifest read as for any run):

* ``generate`` (:func:`play`): iteration k's negative sessions (``generation.prompts_per_iteration`` of
  them, sampled like prompts), and for each ``generation.n`` continuations played by the running
  generators from the erroneous turn, one assistant turn per batched call with the user turns replayed
  from the data (``selfplay.pairs.sessions.play_sessions``). Each turn's shards are stored under
  ``sessions/turn_t/`` as they finish, so a stage interrupted mid-turn generates only what is missing.
  Written: ``sessions.parquet``, a row per negative session with its played continuations.
* ``judge`` (:func:`judge`): the run's judge scores each session's played continuations and its negative
  one cut to the segment, as one group. Written: ``session_judgments.parquet``.
* ``pairs`` (:func:`pairs`): the best played session against the negative one where it scores strictly
  higher (``pairing.min_margin``; ``pairing.mix_previous`` as in any run), ``pairs.parquet`` in the usual
  columns. Segment-level DPO (``train.loss.segment_turns``) then trains on them as on any multi-turn pair.

Tables store messages JSON-encoded, as prompts are everywhere (``selfplay.records``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from selfplay.loop import stages
from selfplay.loop.manifest import Stage
from selfplay.loop.rundir import read_parquet, write_parquet
from selfplay.loop.stages.context import Iteration, StageContext
from selfplay.pairs.sessions import (
    JudgedSession,
    NegativeSession,
    judge_sessions,
    play_sessions,
    session_hint,
    session_pairs,
)
from selfplay.records import PAIRS_SCHEMA, encode_prompt

SESSIONS_SCHEMA = pa.schema([("session_id", pa.string()), ("prompt", pa.string()), ("negative", pa.string()),
                             ("played", pa.list_(pa.string()))])
JUDGED_SCHEMA = pa.schema([*SESSIONS_SCHEMA, ("played_scores", pa.list_(pa.float64())),
                           ("negative_segment", pa.string()), ("negative_score", pa.float64()),
                           ("judge", pa.string())])


class _TurnShards:
    """The generator pool as an engine for ``play_sessions``: call t (turn t) stores its shards in ``turn_t/``."""

    def __init__(self, pool: Any, root: Path, advance: Any) -> None:
        self.pool, self.root, self.advance, self.turn = pool, root, advance, 0

    def generate(self, prompts: list[Any], sampling: Any) -> list[Any]:
        completions, _ = self.pool.generate(prompts, sampling, shard_dir=self.root / f"turn_{self.turn}")
        self.turn += 1
        self.advance()
        return completions


def negatives_of(examples: list[Any]) -> list[NegativeSession]:
    return [NegativeSession(list(ex.prompt), list(ex.meta["rejected"]), ex.id) for ex in examples]


def play(rt: StageContext, it: Iteration, pool: Any) -> dict[str, Any]:
    """``generate`` of a sessions task: every negative session's continuations, played turn by turn on ``pool``."""
    pool.expect_version(it.k)
    negatives = negatives_of(stages.sample_prompts(rt, it.k))
    sampling = rt.sampling(seed=it.sample_seed)
    turns = rt.cfg.train.loss.segment_turns
    with rt.progress(f"play {len(negatives)} sessions x {sampling.n}, {turns} assistant turns", total=turns) as adv:
        played = play_sessions(_TurnShards(pool, it.dir / "sessions", adv), negatives, sampling, turns)
    rows = [{"session_id": neg.id, "prompt": encode_prompt(neg.history), "negative": encode_prompt(neg.continuation),
             "played": [encode_prompt(p) for p in sessions]} for neg, sessions in zip(negatives, played)]
    write_parquet(it.dir / "sessions.parquet", pa.Table.from_pylist(rows, schema=SESSIONS_SCHEMA))
    return {"sessions": len(negatives), "samples": sum(len(p) for p in played), "turns": turns,
            "replayed_user_turns": turns - 1}


def judge(rt: StageContext, it: Iteration, session_judge: Any) -> dict[str, Any]:
    """``judge`` of a sessions task: the played and the negative continuations of each session, scored."""
    table = read_parquet(it.dir / "sessions.parquet").to_pylist()
    negatives = [NegativeSession(json.loads(r["prompt"]), json.loads(r["negative"]), r["session_id"]) for r in table]
    played = [[json.loads(p) for p in r["played"]] for r in table]
    turns = rt.cfg.train.loss.segment_turns
    with rt.progress(f"judge {len(table)} sessions ({rt.cfg.judge.type})"):
        judged = judge_sessions(negatives, played, session_judge, turns)
    rows = [{**r, "played_scores": s.played_scores, "negative_segment": encode_prompt(s.negative_segment),
             "negative_score": s.negative_score, "judge": session_judge.name} for r, s in zip(table, judged)]
    write_parquet(it.dir / "session_judgments.parquet", pa.Table.from_pylist(rows, schema=JUDGED_SCHEMA))
    scores = [x for s in judged for x in s.played_scores if x is not None]
    negative = [s.negative_score for s in judged if s.negative_score is not None]
    info: dict[str, Any] = {"sessions": len(judged), "judge": session_judge.name}
    if scores:
        info["mean_score"] = sum(scores) / len(scores)
    if negative:
        info["mean_negative_score"] = sum(negative) / len(negative)
    return info


def pairs(rt: StageContext, it: Iteration) -> dict[str, Any]:
    """``pairs`` of a sessions task: a (played, negative) pair per session the played side wins."""
    from selfplay.loop.stages.pairing import _write_pairs
    from selfplay.pairs import mix_previous

    table = read_parquet(it.dir / "session_judgments.parquet").to_pylist()
    judged = [JudgedSession(NegativeSession(json.loads(r["prompt"]), json.loads(r["negative"]), r["session_id"]),
                            [json.loads(p) for p in r["played"]], list(r["played_scores"]),
                            json.loads(r["negative_segment"]), r["negative_score"]) for r in table]
    name = table[0]["judge"] if table else ""
    made = session_pairs(judged, name, it.k, rt.cfg.pairing.min_margin)
    built = pa.Table.from_pylist(made.rows, schema=PAIRS_SCHEMA)
    stats: dict[str, Any] = {**made.stats, "prompts": len(judged)}
    if not made.rows:
        stats["hint"] = session_hint(made.stats)  # why no session made a pair, kept in the pairs record
    if rt.cfg.pairing.mix_previous > 0 and it.k > 0:
        previous = read_parquet(rt.rd.iter_dir(it.k - 1) / "pairs.parquet")
        mixed = mix_previous(built, previous, rt.cfg.pairing.mix_previous, seed=it.pair_seed)
        stats["mixed_in"] = mixed.num_rows - built.num_rows
        built = mixed
    return _write_pairs(rt, it, built, stats)


def session_stages(rt: Any, it: Iteration) -> list[tuple[Stage, Any]]:
    """The driver's first three stages of an iteration of a sessions task, each given the part it uses."""
    return [(Stage.GENERATE, lambda: play(rt, it, rt.generators(it.policy_in, it.k))),
            (Stage.JUDGE, lambda: judge(rt, it, rt.judge)),
            (Stage.PAIRS, lambda: pairs(rt, it))]
