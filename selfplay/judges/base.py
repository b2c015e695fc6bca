"""The judge interface: prompt groups in, one score per sampled response out.

A judge sees whole *groups* (one prompt with all of its sampled responses and its reference answer)
rather than single responses, because the comparing judges (pairwise rankers, LLM-as-a-judge) need the
siblings to score a response, and batched model judges want many responses at once.

Choices:

* ``Judge`` is one method, ``score(groups) -> list[list[float | None]]``, plus a ``name`` that goes into
  the judgments table. ``None`` means "this judge could not decide" (e.g. an unparseable LLM verdict);
  it is counted, never guessed. Judges may expose a ``stats`` dict that ``judge_table`` reports.
* ``run_judge`` is the one place that checks what a judge returned (one list per group, one finite
  float or ``None`` per response) and turns a judge's exception into a ``JudgeError`` that names the
  judge and the prompt. To name the prompt when a batched call fails, the groups are re-scored one
  at a time, stopping after three failures (only on failure; a judge with side effects sees those
  extra calls).
* Prompts are ``str`` in the tables; chat-message prompts are JSON-encoded there and decoded back to
  message lists (``selfplay.records.decode_prompt``), so model judges can render them with a chat template.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from selfplay.records import JUDGMENT_COLUMNS, Prompt, decode_prompt

if TYPE_CHECKING:
    import pyarrow as pa

Scores = list[list[float | None]]


@dataclass(frozen=True)
class PromptGroup:
    """One prompt with its sampled responses (in ``sample_index`` order) and reference answer."""

    prompt_id: str
    prompt: Prompt
    responses: list[str]
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Judge(Protocol):
    """Turns prompt groups into one score (or ``None``: undecided) per response."""

    name: str

    def score(self, groups: list[PromptGroup]) -> Scores: ...


class JudgeError(RuntimeError):
    """A judge failed or returned something malformed; the message names the judge and the prompt."""


def prompt_text(prompt: Prompt) -> str:
    """Plain text of a prompt (chat messages joined as ``role: content`` lines) for judges without a
    chat template."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def run_judge(judge: Judge, groups: list[PromptGroup]) -> Scores:
    """``judge.score(groups)``, validated; any failure becomes a ``JudgeError`` naming the prompt."""
    if not groups:
        return []
    try:
        scores = judge.score(groups)
    except JudgeError:
        raise
    except Exception as err:
        where = _where_it_fails(judge, groups)
        raise JudgeError(f"judge {judge.name!r} failed on {where}: {type(err).__name__}: {err}") from err
    return validate_scores(judge.name, groups, scores)


def validate_scores(name: str, groups: list[PromptGroup], scores: Any) -> Scores:
    """Check one list per group and one finite float or ``None`` per response; return plain floats.

    Any iterable works (lists, tuples, numpy arrays); values may be ints or numpy floats."""
    rows = _as_list(scores)
    if rows is None or len(rows) != len(groups):
        got = type(scores).__name__ if rows is None else len(rows)
        raise JudgeError(f"judge {name!r} must return one list of scores per prompt: "
                         f"expected {len(groups)} lists, got {got}")
    out: Scores = []
    for group, row in zip(groups, rows):
        where = f"judge {name!r}, prompt {group.prompt_id!r}"
        values = _as_list(row)
        if values is None or len(values) != len(group.responses):
            got = type(row).__name__ if values is None else len(values)
            raise JudgeError(f"{where}: expected {len(group.responses)} scores, got {got}")
        clean: list[float | None] = []
        for i, value in enumerate(values):
            if value is None:
                clean.append(None)
                continue
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
                raise JudgeError(f"{where}: score {i} is {value!r}; expected a finite float or None")
            clean.append(float(value))
        out.append(clean)
    return out


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, str | bytes | Mapping):
        return None
    try:
        return list(value)
    except TypeError:
        return None


def _where_it_fails(judge: Judge, groups: list[PromptGroup], most: int = 3) -> str:
    """Re-score one group at a time to name the prompt(s) that fail (stops after ``most`` failures)."""
    if len(groups) == 1:
        return f"prompt {groups[0].prompt_id!r}"
    failing = []
    for group in groups:
        try:
            judge.score([group])
        except Exception:
            failing.append(group.prompt_id)
            if len(failing) == most:
                break
    if not failing:
        return f"a batch of {len(groups)} prompts (each prompt alone scores fine)"
    if len(failing) == 1:
        return f"prompt {failing[0]!r}"
    return f"prompts {', '.join(map(repr, failing))}{' and maybe more' if len(failing) == most else ''}"


def judge_table(
    generations: pa.Table, judge: Judge, examples: dict[str, Any] | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """Score a generations table: its columns plus ``score`` and ``judge``, and the judge's stats."""
    import pyarrow as pa

    groups, slots = _group_rows(generations, examples)
    scores = run_judge(judge, groups)
    column = [scores[g][k] for g, k in slots]
    score, name = JUDGMENT_COLUMNS
    out = generations.append_column(score, pa.array(column, type=score.type))
    out = out.append_column(name, pa.array([judge.name] * len(column), type=name.type))
    scored = [s for s in column if s is not None]
    stats = {
        "prompts": len(groups),
        "samples": len(column),
        "unscored": len(column) - len(scored),
        "mean_score": sum(scored) / len(scored) if scored else None,
        **dict(getattr(judge, "stats", None) or {}),
    }
    return out, stats


def _group_rows(
    table: pa.Table, examples: dict[str, Any] | None
) -> tuple[list[PromptGroup], list[tuple[int, int]]]:
    """The groups, and for every table row its (group, position in group)."""
    rows = table.select(["prompt_id", "prompt", "reference", "sample_index", "response"]).to_pylist()
    members: dict[str, list[int]] = {}
    for r, row in enumerate(rows):
        members.setdefault(row["prompt_id"], []).append(r)
    groups: list[PromptGroup] = []
    slots: list[tuple[int, int]] = [(0, 0)] * len(rows)
    for g, (pid, idx) in enumerate(members.items()):
        idx.sort(key=lambda r: rows[r]["sample_index"])
        for k, r in enumerate(idx):
            slots[r] = (g, k)
        first = rows[idx[0]]
        meta = dict(getattr(examples.get(pid), "meta", None) or {}) if examples else {}
        groups.append(PromptGroup(pid, decode_prompt(first["prompt"]), [rows[r]["response"] for r in idx],
                                  first["reference"], meta))
    return groups, slots
