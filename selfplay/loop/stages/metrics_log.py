"""The per-step metrics log of a training round (``train_metrics.jsonl``): trimmed to where an
interrupted round continues, and summed up into the train stage's record."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from selfplay.loop.rundir import read_jsonl, write_text


def trim_metrics(path: Path, position: int) -> None:
    """Keep the step lines of an interrupted attempt of this round up to ``position``, the step it
    continues after (0: it starts over), so the rerun's lines follow them and none is doubled (a line
    is written before its step's checkpoint, and a round without one restarts from its first step)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= position]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def round_metrics(path: Path) -> dict[str, Any]:
    """Summary of a round from its per-step log, which spans every attempt of an interrupted round
    (a resumed round appends; a step logged twice counts once, the last write wins)."""
    if not path.exists():
        return {}
    steps: dict[tuple, dict] = {}
    for rec in read_jsonl(path):  # a last line cut short by a killed learner is skipped
        steps[(rec.get("round"), rec.get("epoch"), rec.get("step"))] = rec
    records = list(steps.values())
    if not records:
        return {}

    def mean(key: str) -> float | None:
        values = [r[key] for r in records if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
        return sum(values) / len(values) if values else None

    out = {"loss": records[-1].get("loss"), "loss_first": records[0].get("loss"), "loss_mean": mean("loss"),
           "reward_accuracy": mean("reward_accuracy"), "reward_margin": mean("reward_margin"),
           "chosen_logps": mean("chosen_logps"), "rejected_logps": mean("rejected_logps"),
           "logged_steps": len(records)}
    return {k: v for k, v in out.items() if v is not None}
