"""Checks that need the filesystem, run before anything is started or written.

The schema validates a recipe's shape; this validates what it points at, so a bad input fails in
seconds with the field named, not minutes later inside an actor:

* model directories: ``config.json`` readable, the safetensors headers complete (a truncated file is
  named), tensor shapes equal to what the config describes, and the tokenizer no larger than
  ``vocab_size`` (:mod:`selfplay.models.check`; no weights are read);
* data files: present, UTF-8 (the file and line of a bad byte);
* the task itself (:mod:`selfplay.loop.inputs`): it builds, returns ``Example`` objects, has enough
  prompts, a verifier scoring in [0, 1] (one at all where ``evaluation.k`` asks for pass@k), pairs that
  differ, and prompts that fit the generator.

``preflight`` returns the built task (so the run does not load the data twice) and the warnings to log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfplay.config import ConfigError, RunConfig


@dataclass
class Preflight:
    task: Any = None
    warnings: list[str] = field(default_factory=list)


def preflight(cfg: RunConfig, source: str = "<recipe>", *, check_task: bool = True) -> Preflight:
    from selfplay.loop.inputs import utf8_problem
    from selfplay.models.check import model_dir_problems

    problems: list[str] = []

    def need_model(field_name: str, path: str | None, kind: str | None) -> None:
        if path is None:
            return
        p = Path(path)
        if not p.exists():
            problems.append(f"{field_name}: {path} does not exist (models load from local directories only)")
        elif not (p / "config.json").is_file():
            problems.append(f"{field_name}: {path} is not a Hugging Face model directory (no config.json)")
        elif kind is not None:
            problems.extend(f"{field_name}: {p}" for p in model_dir_problems(p, kind))

    def need_file(field_name: str, path: str | None) -> None:
        if path is None:
            return
        if not Path(path).exists():
            problems.append(f"{field_name}: {path} does not exist")
        elif (bad := utf8_problem(Path(path))) and Path(path).suffix in (".jsonl", ".json"):
            problems.append(f"{field_name}: {bad}")

    need_model("policy.path", cfg.policy.path, "causal_lm")
    if cfg.task.type in ("dataset", "pairs"):
        need_file("task.path", cfg.task.path)
    if cfg.task.type == "dataset":
        need_file("task.eval_path", cfg.task.eval_path)
    if cfg.judge is not None and cfg.judge.type in ("reward_model", "pairwise", "llm_judge"):
        kind = {"reward_model": "classifier", "llm_judge": "causal_lm"}.get(cfg.judge.type)
        need_model("judge.path", cfg.judge.path, kind)
    if problems:
        raise ConfigError(source, problems)
    checked = _check_task(cfg, source) if check_task else Preflight()
    wants_eval = cfg.task.type in ("dataset", "reasoning_gym") and cfg.evaluation.num_prompts > 0
    if wants_eval and (too_few := _eval_rows(cfg, checked.task)):
        raise ConfigError(source, too_few)
    ev = cfg.evaluation
    if ev.k is not None and ev.num_prompts > 0 and checked.task is not None and not checked.task.has_verifier:
        raise ConfigError(source, [f"evaluation.k: pass@k and maj@k need a verifier, and the {cfg.task.type} task "
                                   "has none; unset evaluation.k (or give the task one)"])
    return checked


def _check_task(cfg: RunConfig, source: str) -> Preflight:
    from selfplay.loop import inputs

    try:
        task = inputs.build_checked_task(cfg)
        problems, warnings = inputs.check_task(cfg, task)
        if not problems:
            task, problems, more = inputs.check_prompt_lengths(cfg, task)
            warnings += more
    except inputs.InputProblems as exc:
        raise ConfigError(source, exc.problems) from None
    if problems:
        raise ConfigError(source, problems)
    return Preflight(task=task, warnings=warnings)


def _eval_rows(cfg: RunConfig, task: Any = None) -> list[str]:
    """The held-out split must hold ``evaluation.num_prompts`` rows; otherwise evaluation fails only after
    the warm start. ``task`` is the one the input checks built (built here only when they did not run)."""
    from selfplay.loop.factory import build_task_from_config

    try:
        task = task if task is not None else build_task_from_config(cfg)
        held_out = len(task.eval_examples(None, seed=cfg.seed))
    except (ValueError, OSError) as exc:
        return [f"task: {exc}"]
    wanted = cfg.evaluation.num_prompts
    if wanted <= held_out:
        return []
    if cfg.task.type == "reasoning_gym":  # a small problem space repeats itself: fewer distinct problems
        return [f"evaluation.num_prompts: {wanted} is more than the {held_out} distinct held-out problems of "
                f"reasoning_gym {cfg.task.name} with config {cfg.task.config}; set evaluation.num_prompts <= "
                f"{held_out} (or widen the config)"]
    where = (f"task.eval_path {cfg.task.eval_path}" if cfg.task.eval_path else
             f"task.path {cfg.task.path} with task.eval_fraction {cfg.task.eval_fraction}")
    return [f"evaluation.num_prompts: {wanted} is more than the {held_out} held-out rows of {where}; "
            f"set evaluation.num_prompts <= {held_out} (or hold out more rows)"]
