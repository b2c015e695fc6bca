"""Judged samples to (chosen, rejected) pairs: ``prompts -> generate -> judge -> [pairs] -> train``.

Strategies, per prompt (samples whose score is ``None`` are left out and counted):

* ``best_worst``: the highest against the lowest score (ties broken by sample index: lowest index as
  best, highest as worst). One pair.
* ``best_random``: the best against one random other sample that passes the filters (seeded per
  prompt, so a prompt's pick does not depend on the rest of the table). One pair.
* ``all_pairs``: every pair of samples, the higher score chosen, largest margins first.
* ``reference`` (SPIN): the reference answer (chosen, score ``REFERENCE_SCORE`` = 1.0) against each
  sample scoring below it; with the ``sft`` judge those are exactly the samples that differ from it.
  The reference has no token ids (``chosen_token_ids`` is null) and no length penalty.
* ``best`` (rejection sampling, as in RAFT / ReST / STaR): the best sample alone, kept only if its raw
  score reaches ``min_score`` (default 1.0: a verifier's correct answer); ``rejected`` is null. These
  rows are SFT targets, so the strategy needs ``train.loss.type: sft`` (SFT on the chosen column).

Options (``PairingConfig``): ``length_penalty`` ranks by ``score - penalty * len(response_token_ids)``
(as in RLHFlow's length-penalised max-min); ``margin`` is on that penalised scale while
``chosen_score``/``rejected_score`` keep the judge's raw scores. ``drop_ties`` drops margin-0 pairs,
``min_margin`` drops smaller margins, ``max_pairs_per_prompt`` keeps the first pairs in strategy order.
Pairs whose two texts are equal, or that repeat an earlier pair's texts, are always dropped (they
carry no preference, or double-count one).

ODPO offset (``offset`` column): Amini et al. 2024 (arXiv:2402.10571) make the margin a pair must reach
depend on how much better the chosen response is, ``offset = log(score_w - score_l)`` (the loss scales it
by ``alpha``). The raw judge scores are used, not the length-penalised ones. A difference of 0 (a tie kept
with ``drop_ties: false``) is floored at ``MIN_SCORE_GAP``, so the pair asks for (almost) no margin. With a
0/1 verifier every kept pair has a difference of 1, so every offset is 0 and ODPO is exactly DPO; graded
scores (``partial_credit``, a reward model) are what give ODPO something to work with.

Stats (flat, for the manifest): prompts, prompts_with_pairs, prompts_without_pair, the reason each
pairless prompt had (``no_pair_<reason>``, one of ``NO_PAIR_REASONS``), pairs, mean_margin, samples,
unscored_samples, empty_responses and the candidate pairs dropped by each filter (``dropped_*``).

A pairless prompt gets the first reason that applies, checked from the earliest cause in the pipeline
to the latest, so the reason names what to change: ``too_few_samples`` (fewer samples than the strategy
needs: ``generation.n``), ``all_empty`` (every response empty: the model ended at once), ``too_few_scored``
(the judge returned ``None`` for too many), ``all_correct`` / ``all_wrong`` (a verifier's 1 or 0 for
all), ``all_identical`` (one text sampled every time), ``all_tied`` (one score for different texts),
``below_margin``, ``no_reference``, ``below_min_score``. ``no_pair_hint`` turns the counts into one
line naming the recipe field to change.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from selfplay.records import PAIRS_SCHEMA

STRATEGIES = ("best_worst", "best_random", "all_pairs", "reference", "best")
REFERENCE_SCORE = 1.0
NO_PAIR_REASONS = ("all_correct", "all_wrong", "all_tied", "below_margin", "too_few_scored", "no_reference",
                   "below_min_score", "too_few_samples", "all_empty", "all_identical")
# What each reason asks the user to change (recipe fields), for ``no_pair_hint``.
NO_PAIR_HINTS = {
    "too_few_samples": "a prompt needs at least 2 samples to make a pair: raise generation.n to 2 or more "
                       "(pairing.strategy reference or best work with 1)",
    "all_empty": "every response was empty (the policy ended at once): check generation.max_tokens, "
                 "generation.stop / stop_token_ids and generation.prompt_template",
    "too_few_scored": "the judge gave no score (None) to {unscored} of {samples} samples: check the judge "
                      "(an llm_judge verdict cut short by judge.max_tokens, a judge.template that asks "
                      "for no A/B letter, or a verifier that cannot read the answer format)",
    "all_identical": "every sample of a prompt was the same text: raise generation.temperature "
                     "(or generation.top_p / top_k)",
    "all_tied": "the judge gave every sample of a prompt the same score: raise generation.n or "
                "generation.temperature, or set pairing.drop_ties: false",
    "all_correct": "every sample was correct: the prompts are solved (harder prompts, or stop_when_solved "
                   "to end such a run)",
    "all_wrong": "every sample was wrong: the task is too hard for the policy (add policy.warmstart, "
                 "or raise generation.n)",
    "below_margin": "no pair reached pairing.min_margin: lower it",
    "no_reference": "pairing.strategy reference needs the task's reference answers, and there are none: "
                    "choose another pairing.strategy",
    "below_min_score": "no sample reached pairing.min_score: lower it",
}
REQUIRED_COLUMNS = ("prompt_id", "prompt", "reference", "sample_index", "response", "score", "iteration")
DROP_REASONS = ("ties", "below_margin", "identical", "duplicate", "over_cap")
MIN_SCORE_GAP = 1e-3  # floor of the score difference in the ODPO offset: log(1e-3) = -6.9


def odpo_offset(chosen_score: float | None, rejected_score: float | None) -> float | None:
    """ODPO's offset of one pair, ``log(max(chosen_score - rejected_score, MIN_SCORE_GAP))``; None without scores."""
    if chosen_score is None or rejected_score is None:
        return None
    return math.log(max(chosen_score - rejected_score, MIN_SCORE_GAP))


@dataclass(frozen=True)
class Side:
    """One side of a pair: a sample (``index`` >= 0) or the reference (``index`` -1)."""

    index: int
    text: str
    token_ids: list[int] | None
    score: float  # the judge's raw score
    ranked: float  # the score pairs are ranked by (length-penalised for samples)
    policy_version: int | None = None


def build_pairs(judgments: pa.Table, cfg: Any, strategy: str | None = None,
                seed: int = 0) -> tuple[pa.Table, dict[str, Any]]:
    """Pairs (``PAIRS_SCHEMA``) and stats from a judgments table under ``cfg`` (a ``PairingConfig``)."""
    strategy = strategy or cfg.strategy or "best_worst"
    if strategy not in STRATEGIES:
        raise ValueError(f"pairing.strategy: unknown {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in judgments.column_names]
    if missing:
        raise ValueError(f"judgments table is missing column(s) {missing}; it needs {list(REQUIRED_COLUMNS)}")
    rows = judgments.to_pylist()
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["prompt_id"], []).append(row)
    records: list[dict[str, Any]] = []
    no_pair: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    unscored = empty = 0
    for pid, items in groups.items():
        items.sort(key=lambda r: r["sample_index"])
        sides = [_side(r, cfg.length_penalty) for r in items if r["score"] is not None]
        unscored += len(items) - len(sides)
        empty += sum(not (r["response"] or "").strip() for r in items)
        first = items[0]
        if strategy == "best":
            kept = _best_alone(sides, getattr(cfg, "min_score", 1.0))
        else:
            kept = _filter(_candidates(strategy, sides, first["reference"]), cfg, dropped)
        if strategy == "best_random" and kept:
            kept = [random.Random(f"{seed}:{first['iteration']}:{pid}").choice(kept)]
        if cfg.max_pairs_per_prompt is not None and len(kept) > cfg.max_pairs_per_prompt:
            dropped["over_cap"] += len(kept) - cfg.max_pairs_per_prompt
            kept = kept[: cfg.max_pairs_per_prompt]
        if not kept:
            no_pair[_no_pair_reason(strategy, items, sides, first["reference"])] += 1
        records += [_record(first, chosen, rejected) for chosen, rejected in kept]
    margins = [r["margin"] for r in records if r["margin"] is not None]
    stats: dict[str, Any] = {
        "strategy": strategy,
        "prompts": len(groups),
        "prompts_with_pairs": len(groups) - sum(no_pair.values()),
        "prompts_without_pair": sum(no_pair.values()),
        **{f"no_pair_{k}": no_pair[k] for k in NO_PAIR_REASONS},
        "pairs": len(records),
        "mean_margin": sum(margins) / len(margins) if margins else None,
        "samples": len(rows),
        "unscored_samples": unscored,
        "empty_responses": empty,
        **{f"dropped_{k}": dropped[k] for k in DROP_REASONS},
    }
    return pa.Table.from_pylist(records, schema=PAIRS_SCHEMA), stats


def _side(row: dict[str, Any], length_penalty: float) -> Side:
    ids = row.get("response_token_ids")
    if length_penalty and ids is None:
        raise ValueError(f"pairing.length_penalty needs response_token_ids; prompt {row['prompt_id']!r} "
                         f"sample {row['sample_index']} has none")
    ranked = row["score"] - length_penalty * len(ids) if length_penalty else row["score"]
    return Side(row["sample_index"], row["response"], ids, row["score"], ranked, row.get("policy_version"))


def _best_alone(sides: list[Side], min_score: float | None) -> list[tuple[Side, None]]:
    """Rejection sampling: the best-ranked sample (lowest index on ties) if its raw score passes."""
    if not sides:
        return []
    best = min(sides, key=lambda s: (-s.ranked, s.index))
    return [(best, None)] if min_score is None or best.score >= min_score else []


def _candidates(strategy: str, sides: list[Side], reference: str | None) -> list[tuple[Side, Side]]:
    """Every pair the strategy considers, in its order of preference, as (chosen, rejected)."""
    if strategy == "reference":
        if reference is None:
            return []
        ref = Side(-1, reference, None, REFERENCE_SCORE, REFERENCE_SCORE)
        return [(ref, s) for s in sides]
    if len(sides) < 2:
        return []
    # best: highest ranked score, lowest index on ties; worst: lowest ranked score, highest index on ties
    best = min(sides, key=lambda s: (-s.ranked, s.index))
    if strategy == "best_worst":
        worst = min(sides, key=lambda s: (s.ranked, -s.index))
        return [(best, worst)]
    if strategy == "best_random":
        return [(best, s) for s in sides if s is not best]
    pairs = [(a, b) if a.ranked >= b.ranked else (b, a) for i, a in enumerate(sides) for b in sides[i + 1:]]
    return sorted(pairs, key=lambda p: (-(p[0].ranked - p[1].ranked), p[0].index, p[1].index))


def _filter(candidates: list[tuple[Side, Side]], cfg: Any, dropped: Counter[str]) -> list[tuple[Side, Side]]:
    kept, seen = [], set()
    for chosen, rejected in candidates:
        margin = chosen.ranked - rejected.ranked
        # margin < 0 happens only for `reference`: a sample scored above the reference
        if margin < 0 or (margin == 0 and (cfg.drop_ties or chosen.index == -1)):
            dropped["ties"] += 1
        elif margin < cfg.min_margin:
            dropped["below_margin"] += 1
        elif chosen.text == rejected.text:
            dropped["identical"] += 1
        elif (chosen.text, rejected.text) in seen:
            dropped["duplicate"] += 1
        else:
            seen.add((chosen.text, rejected.text))
            kept.append((chosen, rejected))
    return kept


def _no_pair_reason(strategy: str, items: list[dict[str, Any]], sides: list[Side], reference: str | None) -> str:
    """Why a prompt has no pair: the earliest cause in generate -> judge -> pair order (see the module doc)."""
    if strategy == "reference" and reference is None:
        return "no_reference"
    if len(items) < (1 if strategy in ("reference", "best") else 2):
        return "too_few_samples"
    if all(not (r["response"] or "").strip() for r in items):
        return "all_empty"
    if strategy == "best":
        if not sides:
            return "too_few_scored"
        return "all_wrong" if max(s.score for s in sides) == 0.0 else "below_min_score"
    if len(sides) < (1 if strategy == "reference" else 2):
        return "too_few_scored"
    raw = {s.score for s in sides}
    if strategy == "reference":
        if min(raw) >= REFERENCE_SCORE:
            return "all_correct"
        return "below_margin"
    if raw == {1.0}:
        return "all_correct"
    if len({s.text for s in sides}) == 1:
        return "all_identical"
    if len(raw) == 1:
        return "all_wrong" if raw == {0.0} else "all_tied"
    return "below_margin"


def no_pair_hint(stats: dict[str, Any]) -> str:
    """One line from ``build_pairs`` stats: the causes of pairless prompts, most frequent first, each with
    the recipe field to change; ``""`` when every prompt had a pair."""
    counts = sorted(((stats.get(f"no_pair_{r}", 0), r) for r in NO_PAIR_REASONS), key=lambda c: -c[0])
    parts = []
    for count, reason in counts:
        if count:
            hint = NO_PAIR_HINTS[reason].format(unscored=stats.get("unscored_samples", "?"),
                                                samples=stats.get("samples", "?"))
            parts.append(f"{count} prompt{'s' if count != 1 else ''} {reason}: {hint}")
    return "; ".join(parts)


def _record(row: dict[str, Any], chosen: Side, rejected: Side | None) -> dict[str, Any]:
    """One pairs row; ``rejected`` None (strategy ``best``) leaves the rejected columns and margin null."""
    a = "ref" if chosen.index == -1 else str(chosen.index)
    b = "" if rejected is None else str(rejected.index)
    versions = [v for v in (chosen.policy_version, rejected and rejected.policy_version) if v is not None]
    return {
        "pair_id": f"{row['iteration']}:{row['prompt_id']}:{a}:{b}",
        "prompt_id": row["prompt_id"],
        "prompt": row["prompt"],
        "chosen": chosen.text,
        "rejected": None if rejected is None else rejected.text,
        "chosen_token_ids": chosen.token_ids,
        "rejected_token_ids": None if rejected is None else rejected.token_ids,
        "chosen_score": chosen.score,
        "rejected_score": None if rejected is None else rejected.score,
        "margin": None if rejected is None else chosen.ranked - rejected.ranked,
        "judge": row.get("judge") or "",
        "policy_version": max(versions) if versions else row.get("policy_version"),
        "iteration": row["iteration"],
        "offset": None if rejected is None else odpo_offset(chosen.score, rejected.score),
    }
