"""The evaluate stage: held-out evaluation of a policy (also the prepare stage's, of the initial one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfplay.loop.manifest import Stage, TrainRecord
from selfplay.loop.rundir import write_json, write_parquet
from selfplay.loop.stages.context import GeneratorsAt, Iteration, StageContext


def eval_due(cfg, k: int) -> bool:
    """Iteration k is evaluated every ``evaluation.every`` iterations, and the last one always."""
    return (k + 1) % cfg.evaluation.every == 0 or k == cfg.iterations - 1


def evaluate(rt: StageContext, it: Iteration, generators: GeneratorsAt, judge: Callable[[], Any]) -> dict[str, Any]:
    if not eval_due(rt.cfg, it.k):  # no eval.json: status, report and the summary show "-" for this iteration
        return {"skipped": f"evaluation.every={rt.cfg.evaluation.every}"}
    train = rt.rd.stage_record(it.k, Stage.TRAIN)
    assert isinstance(train, TrainRecord)
    extra = {"rejected_drift": train.rejected_drift} if train.rejected_drift is not None else {}
    return evaluate_policy(rt, it.policy_out, version=it.version, out_dir=it.dir, generators=generators, judge=judge,
                           extra=extra)


def evaluate_policy(rt: StageContext, policy_dir: Path, version: int, out_dir: Path, generators: GeneratorsAt,
                    judge: Callable[[], Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Held-out evaluation: task accuracy (verifier), win rate vs the initial policy, mean judge score, and
    with ``evaluation.k`` pass@k / maj@k over ``k`` samples per prompt; sampled by ``generators`` holding
    ``policy_dir``, judged by ``judge()`` where the recipe's judge takes part.
    ``extra`` (this round's numbers, e.g. the rejected drift) is written into ``eval.json`` with it."""
    from selfplay.loop.evaluation import score_eval

    n = rt.cfg.evaluation.num_prompts
    if n == 0:
        write_json(out_dir / "eval.json", {"version": version, "num_prompts": 0, **(extra or {})})
        return dict(extra or {})
    examples = rt.task.eval_examples(n, seed=rt.cfg.seed)
    pool = generators(policy_dir, version)
    pool.expect_version(version)
    sampling = rt.sampling(seed=rt.cfg.seed, eval_mode=True)
    completions, _ = pool.generate(examples, sampling, shard_dir=None)
    responses = [c[0].text for c in completions]
    samples = None
    if rt.cfg.evaluation.k is not None:  # pass@k / maj@k: k more answers per prompt, sampled
        sampled, _ = pool.generate(examples, rt.sampling(seed=rt.cfg.seed, eval_mode=True, eval_samples=True),
                                   shard_dir=None)
        samples = [[c.text for c in per_prompt] for per_prompt in sampled]
    baseline = rt.rd.initial_dir / "eval_generations.parquet"
    result, table = score_eval(rt, judge, examples, responses, baseline if version > 0 else None, samples)
    result = {"version": version, "num_prompts": len(examples), **result, **(extra or {})}
    write_parquet(out_dir / "eval_generations.parquet", table)
    write_json(out_dir / "eval.json", result)
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
