"""Checks that need the filesystem, run before anything is started or written.

The schema validates a recipe's shape; this validates what it points at (model directories, data
files), so a typo in a path fails in a second with the field named, not minutes later inside an actor.
"""

from __future__ import annotations

from pathlib import Path

from selfplay.config import ConfigError, RunConfig


def preflight(cfg: RunConfig, source: str = "<recipe>") -> None:
    problems: list[str] = []

    def need_model(field: str, path: str | None) -> None:
        if path is None:
            return
        p = Path(path)
        if not p.exists():
            problems.append(f"{field}: {path} does not exist (models load from local directories only)")
        elif not (p / "config.json").is_file():
            problems.append(f"{field}: {path} is not a Hugging Face model directory (no config.json)")

    def need_file(field: str, path: str | None) -> None:
        if path is not None and not Path(path).exists():
            problems.append(f"{field}: {path} does not exist")

    need_model("policy.path", cfg.policy.path)
    if cfg.task.type in ("dataset", "pairs"):
        need_file("task.path", cfg.task.path)
    if cfg.task.type == "dataset":
        need_file("task.eval_path", cfg.task.eval_path)
    if cfg.judge is not None and cfg.judge.type in ("reward_model", "pairwise", "llm_judge"):
        need_model("judge.path", cfg.judge.path)
    if problems:
        raise ConfigError(source, problems)
