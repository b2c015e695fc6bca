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
    if not problems and cfg.task.type == "dataset" and cfg.evaluation.num_prompts > 0:
        problems += _eval_rows(cfg)
    if problems:
        raise ConfigError(source, problems)


def _eval_rows(cfg: RunConfig) -> list[str]:
    """The held-out split must hold ``evaluation.num_prompts`` rows; otherwise evaluation fails only after
    the warm start. Building the task reads the data file once more, which is the price of failing early."""
    from selfplay.loop.factory import build_task_from_config

    try:
        task = build_task_from_config(cfg)
        held_out = len(task.eval_examples(None, seed=cfg.seed))
    except (ValueError, OSError) as exc:
        return [f"task: {exc}"]
    wanted = cfg.evaluation.num_prompts
    if wanted <= held_out:
        return []
    where = (f"task.eval_path {cfg.task.eval_path}" if cfg.task.eval_path else
             f"task.path {cfg.task.path} with task.eval_fraction {cfg.task.eval_fraction}")
    return [f"evaluation.num_prompts: {wanted} is more than the {held_out} held-out rows of {where}; "
            f"set evaluation.num_prompts <= {held_out} (or hold out more rows)"]
