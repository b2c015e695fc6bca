"""The plain factory: recipe sections -> the parts a run uses (explicit if/elif, no registry).

This is the only module that maps config fields onto constructor arguments, so renaming a field
touches one place, and the parts themselves stay free of the config classes where that is natural.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.config import RunConfig


def build_task_from_config(cfg: RunConfig):
    from selfplay.tasks import build_task
    from selfplay.tasks.pairs import PairsTask

    t = cfg.task
    wanted_train = cfg.generation.prompts_per_iteration * cfg.iterations
    if cfg.policy.warmstart is not None:
        wanted_train = max(wanted_train, cfg.policy.warmstart.examples)
    sizes = {"train_size": max(1000, wanted_train), "eval_size": max(200, cfg.evaluation.num_prompts)}
    if t.type == "arithmetic":
        return build_task("arithmetic", level=t.level, partial_credit=t.partial_credit, chat=t.chat, **sizes)
    if t.type == "sorting":
        return build_task("sorting", min_len=t.min_len, max_len=t.max_len, max_value=t.max_value,
                          descending=t.descending, partial_credit=t.partial_credit, chat=t.chat, **sizes)
    if t.type == "word_problems":
        return build_task("word_problems", chat=t.chat, **sizes)
    if t.type == "dataset":
        return build_task("dataset", path=t.path, prompt_column=t.prompt_column, reference_column=t.reference_column,
                          id_column=t.id_column, eval_path=t.eval_path, eval_fraction=t.eval_fraction,
                          split_seed=cfg.seed)
    if t.type == "pairs":
        return PairsTask(t.path, t.prompt_column, t.chosen_column, t.rejected_column, t.eval_fraction, cfg.seed,
                         chunks=t.chunks)
    if t.type == "python":
        return build_task("python", target=t.target, **t.kwargs)
    raise ValueError(f"task.type: unknown task {t.type!r}")


def build_judge_from_config(rt) -> Any:
    from selfplay.judges import build_judge

    cfg = rt.cfg
    if cfg.judge is None:
        return None
    remote = cfg.judge.type in ("reward_model", "pairwise")
    engine = None
    if cfg.judge.type == "llm_judge":
        engine = rt.judge_engine()
    if remote:
        rt.ensure_ray()
    cpus, gpus = judge_resources(cfg)
    return build_judge(cfg.judge, rt.task, engine=engine, remote=remote, num_cpus=cpus, num_gpus=gpus)


def judge_resources(cfg: RunConfig) -> tuple[float, float]:
    """CPUs and GPUs of the model judge's actor (``resources.judge_*``, else the generators' values)."""
    res = cfg.resources
    cpus = res.judge_cpus if res.judge_cpus is not None else res.generator_cpus
    gpus = res.judge_gpus if res.judge_gpus is not None else res.generator_gpus
    return cpus, gpus


def build_generators(rt, policy_dir: Path, version: int):
    """The generator pool (Ray actors, each owning a vLLM or HF engine) holding ``policy_dir``."""
    from actors.generator import GeneratorPool

    rt.ensure_ray()
    cfg = rt.cfg
    return GeneratorPool(policy_dir, cfg.generation, cfg.resources, version=version, dtype=cfg.policy.dtype,
                         seed=cfg.seed)


def build_learners(rt, policy_dir: Path):
    """The DeepSpeed learner group (Ray actors forming one world) starting from ``policy_dir``."""
    from actors.learner import LearnerGroup

    rt.ensure_ray()
    cfg = rt.cfg
    return LearnerGroup(policy_dir, cfg.train, cfg.resources.learners, cfg.resources, cfg.seed,
                        output_dir=rt.rd.root / "tensorboard")


def build_sync(rt):
    from selfplay.sync import make_sync

    sync_cfg = rt.cfg.sync.model_copy(update={"probe_tolerance": rt.cfg.probe_tolerance})
    return make_sync(sync_cfg, rt.rd.root / "weights")
