"""The plain factory: recipe sections -> the parts a run uses (explicit if/elif, no registry).

This is the only module that maps config fields onto constructor arguments, so renaming a field
touches one place, and the parts themselves stay free of the config classes where that is natural.
It is also the one place that decides *where* a part runs: the library packages build in-process
parts only (``selfplay.judges.build_judge``), and the actors (``actors/``: generator pools, learner
groups, the model judge's actor, the LLM judge's own generator pool) are started here and nowhere
below ``selfplay.loop``. Every builder that starts an actor gets a started Ray from the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.config import RunConfig
from selfplay.config.cores import count

ACTOR_JUDGES = ("reward_model", "pairwise")  # model judges hosted in a Ray actor of their own


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
        grader = None if t.grader is None else {"type": t.grader.type, **t.grader.params()}
        return build_task("dataset", path=t.path, prompt_column=t.prompt_column, reference_column=t.reference_column,
                          id_column=t.id_column, eval_path=t.eval_path, eval_fraction=t.eval_fraction,
                          split_seed=cfg.seed, grader=grader)
    if t.type == "reasoning_gym":
        return build_task("reasoning_gym", name=t.name, config=dict(t.config), seed=cfg.seed,
                          prompt_template=t.prompt_template, chat=t.chat, extract=t.extract, markers=list(t.markers),
                          **sizes)
    if t.type == "pairs":
        return PairsTask(t.path, t.prompt_column, t.chosen_column, t.rejected_column, t.eval_fraction, cfg.seed,
                         chunks=t.chunks, segment_turns=cfg.train.loss.segment_turns)
    if t.type == "sessions":
        from selfplay.tasks.sessions import SessionsTask

        return SessionsTask(t.path, cfg.train.loss.segment_turns, t.prompt_column, t.rejected_column, t.eval_fraction,
                            cfg.seed)
    if t.type == "python":
        return build_task("python", target=t.target, **t.kwargs)
    raise ValueError(f"task.type: unknown task {t.type!r}")


def judge_needs_ray(cfg: RunConfig) -> bool:
    """Whether the configured judge starts actors (a model judge's actor, or the LLM judge's generator)."""
    return cfg.judge is not None and (cfg.judge.type in ACTOR_JUDGES or cfg.judge.type == "llm_judge")


def build_judge_from_config(cfg: RunConfig, task: Any) -> tuple[Any, Any]:
    """The configured judge and the generator pool it owns (the LLM judge's; else None).

    Model judges run in a Ray actor (``actors/judge.py``), the LLM judge completes its prompts on a
    one-replica generator pool of its own; the others run in-process. Ray must be started for the first two.
    """
    if cfg.judge is None:
        return None, None
    if cfg.judge.type in ACTOR_JUDGES:
        from actors.judge import spawn_judge

        cpus, gpus = judge_resources(cfg)
        threads = count(cfg.resources.threads_per_actor)
        return spawn_judge(cfg.judge, num_cpus=cpus, num_gpus=gpus, threads=threads), None
    from selfplay.judges import build_judge

    if cfg.judge.type == "llm_judge":
        # Greedy, one replica, its own model: shares nothing with the policy pool.
        judge_gen = cfg.generation.model_copy(update={"replicas": 1, "n": 1})
        pool = build_generators(cfg, Path(cfg.judge.path), 0, gen_cfg=judge_gen, dtype="auto")
        return build_judge(cfg.judge, task, engine=_CompletionsOnly(pool)), pool
    return build_judge(cfg.judge, task), None


class _CompletionsOnly:
    """The pool returns (completions, seconds); judges want the engine API (completions only)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def generate(self, prompts, sampling):
        return self.pool.generate(prompts, sampling)[0]


def judge_resources(cfg: RunConfig) -> tuple[float, float]:
    """CPUs and GPUs of the model judge's actor (``resources.judge_*``, else the generators' values)."""
    res = cfg.resources
    cpus = res.judge_cpus if res.judge_cpus is not None else res.generator_cpus
    gpus = res.judge_gpus if res.judge_gpus is not None else res.generator_gpus
    return cpus, gpus


def build_generators(cfg: RunConfig, policy_dir: Path, version: int, *, gen_cfg: Any = None,
                     dtype: str | None = None):
    """A generator pool (Ray actors, each owning a vLLM or HF engine) holding ``policy_dir`` as ``version``:
    the policy's (``generation`` section), or with ``gen_cfg``/``dtype`` another model's (the LLM judge)."""
    from actors.generator import GeneratorPool
    from selfplay.loop import faults

    engine_kwargs = None
    if gen_cfg is None and cfg.adapter_sync:  # the policy's generators serve LoRA adapters (sync.lora)
        from selfplay.generate.adapter import AdapterSpec

        engine_kwargs = {"lora": AdapterSpec.of(cfg.train.lora)}
    pool = GeneratorPool(policy_dir, gen_cfg or cfg.generation, cfg.resources, version=version,
                         dtype=dtype or cfg.policy.dtype, seed=cfg.seed, engine_kwargs=engine_kwargs)
    faults.hang_deadline(pool)  # crash tests (``hang@k``) only: a short shard deadline
    return pool


def build_learners(cfg: RunConfig, policy_dir: Path, output_dir: Path):
    """The DeepSpeed learner group (Ray actors forming one world) starting from ``policy_dir``."""
    from actors.learner import LearnerGroup

    return LearnerGroup(policy_dir, cfg.train, cfg.resources.learners, cfg.resources, cfg.seed,
                        output_dir=output_dir, tensorboard="tensorboard" in cfg.logging.backends)


def build_sync(cfg: RunConfig, weights_dir: Path):
    from selfplay.sync import make_sync

    sync_cfg = cfg.sync.model_copy(update={"probe_tolerance": cfg.probe_tolerance})
    return make_sync(sync_cfg, weights_dir)
