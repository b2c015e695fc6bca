"""The one-line summary of a stage's record that the driver logs after each stage."""

from __future__ import annotations

from typing import Any


def brief(info: dict[str, Any]) -> str:
    keys = ("samples", "pairs", "mean_score", "loss", "reward_accuracy", "accuracy", "win_rate", "max_diff",
            "trainable_params")
    parts = [f"{k}={info[k]:.4g}" if isinstance(info[k], float) else f"{k}={info[k]}" for k in keys if k in info]
    return " ".join(parts)
