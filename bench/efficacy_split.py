"""The held-out prompts of ``bench.efficacy`` in two halves: validation (every choice) and test (reported).

A run evaluates ``evaluation.num_prompts`` held-out prompts and writes one row per prompt, with its
``prompt_id`` and ``verifier_score``, to ``eval_generations.parquet`` (``initial/`` for the start policy,
``iter_NNN/`` for each evaluated iteration). This module assigns each prompt to a half by a salted
SHA-256 of its id, so:

* the split needs nothing from the run but that table, and old run directories split the same way;
* it is a property of the problem, not of the seed or of the run: the task's ids are stable hashes of the
  problem (``selfplay.tasks.base``), so a test problem that seed 1 evaluates is never a validation
  problem of seed 0's tuning runs, although each seed samples its own held-out problems;
* the salt keeps it independent of the task's own train/eval split, which hashes the same keys.

``--tune`` reads only ``validation``; the table prints only ``test``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SALT = "selfplay-efficacy-split-v1"
SPLITS = ("validation", "test")


def split_of(prompt_id: str) -> str:
    """``"validation"`` or ``"test"``: half of all ids each, fixed for a given id."""
    bucket = int(hashlib.sha256(f"{SALT}:{prompt_id}".encode()).hexdigest()[:8], 16)
    return "validation" if bucket < 2**31 else "test"


def split_scores(rows: Iterable[tuple[str, float | None]]) -> dict[str, dict[str, Any]]:
    """{split: {"accuracy": mean verifier score or None, "n": prompts scored}} from (prompt_id, score)
    rows; a prompt without a score (a task without a verifier) is not counted."""
    totals = {s: [0.0, 0] for s in SPLITS}
    for prompt_id, score in rows:
        if score is None:
            continue
        t = totals[split_of(str(prompt_id))]
        t[0] += float(score)
        t[1] += 1
    return {s: {"accuracy": (t[0] / t[1]) if t[1] else None, "n": t[1]} for s, t in totals.items()}


def eval_table_scores(path: Path) -> dict[str, dict[str, Any]]:
    """``split_scores`` of one ``eval_generations.parquet``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["prompt_id", "verifier_score"])
    return split_scores(zip(table.column("prompt_id").to_pylist(), table.column("verifier_score").to_pylist()))


def last_eval_table(run_dir: Path) -> Path | None:
    """The newest iteration's ``eval_generations.parquet`` of a run directory (None if none was written)."""
    found = sorted(Path(run_dir).glob("iter_*/eval_generations.parquet"))
    return found[-1] if found else None


def run_split_scores(run_dir: Path) -> dict[str, Any]:
    """Validation and test accuracy of a run's start (``initial/``) and of its last evaluated iteration:
    ``{"validation", "test", "n_validation", "n_test", "start_validation", "start_test"}`` (None where
    a table is missing)."""
    out: dict[str, Any] = {f"{p}{s}": None for p in ("", "start_") for s in SPLITS}
    out.update(n_validation=0, n_test=0)
    start = Path(run_dir) / "initial" / "eval_generations.parquet"
    if start.exists():
        scores = eval_table_scores(start)
        out.update({f"start_{s}": scores[s]["accuracy"] for s in SPLITS})
    last = last_eval_table(Path(run_dir))
    if last is not None:
        scores = eval_table_scores(last)
        out.update({s: scores[s]["accuracy"] for s in SPLITS})
        out.update({f"n_{s}": scores[s]["n"] for s in SPLITS})
    return out
