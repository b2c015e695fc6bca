"""The stages of one iteration. Each reads its input artifact from the iteration directory, writes its
output atomically and returns a small dict of facts that the manifest records (and status shows).

Which weights each actor holds is derived from the run directory, never remembered: the policy that
*generates* in iteration k is iteration k-1's ``policy/`` (or the initial one), and the policy that
*trains* in iteration k starts from the same directory. That is what makes every stage resumable.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pyarrow as pa

from selfplay.loop import faults
from selfplay.loop.rundir import read_parquet, write_json, write_parquet

# ------------------------------------------------------------------------------------------ helpers


def brief(info: dict[str, Any]) -> str:
    keys = ("samples", "pairs", "mean_score", "loss", "reward_accuracy", "accuracy", "win_rate", "max_diff",
            "trainable_params")
    parts = [f"{k}={info[k]:.4g}" if isinstance(info[k], float) else f"{k}={info[k]}" for k in keys if k in info]
    return " ".join(parts)


def initial_policy(rt) -> Path:
    return Path(rt.rd.manifest.get("initial_policy") or rt.rd.initial_dir / "policy")


def policy_before(rt, k: int) -> Path:
    """The policy iteration ``k`` generates with and starts training from."""
    return rt.rd.iter_dir(k - 1) / "policy" if k > 0 else initial_policy(rt)


def sample_prompts(rt, k: int) -> list:
    """Iteration k's training prompts: slice k of a seeded permutation of the task's training split,
    so iterations see disjoint prompts until the split is used up (then it wraps around).
    ``generation.prompt_source`` `fixed`/`files` are ``prompt_source.iteration_prompts``."""
    from selfplay.loop.prompt_source import iteration_prompts

    if (chosen := iteration_prompts(rt, k)) is not None:
        return chosen
    per_iter = rt.cfg.generation.prompts_per_iteration
    pool = rt.task.train_examples(None, seed=rt.cfg.seed)
    if not pool:
        raise ValueError("the task returned no training prompts")
    order = list(range(len(pool)))
    random.Random(rt.cfg.seed).shuffle(order)
    start = (k * per_iter) % len(pool)
    return [pool[order[(start + i) % len(pool)]] for i in range(min(per_iter, len(pool)))]


def _examples_by_id(examples) -> dict[str, Any]:
    return {ex.id: ex for ex in examples}


# ------------------------------------------------------------------------------------------- prepare


def prepare(rt) -> dict[str, Any]:
    """The starting policy (a preset built offline, or a local checkpoint), its warm start, its eval."""
    from selfplay.models import build_policy, check_model_dir

    cfg = rt.cfg
    target = rt.rd.initial_dir / "policy"
    if cfg.policy.preset is not None:
        base = build_policy(rt.rd.initial_dir / "base", preset=cfg.policy.preset, tokenizer=cfg.policy.tokenizer,
                            seed=cfg.seed, overwrite=True)
    else:
        base = check_model_dir(cfg.policy.path)
    info: dict[str, Any] = {}
    if cfg.policy.warmstart is not None:
        ws = cfg.policy.warmstart
        from selfplay.records import encode_prompt

        pool = rt.task.train_examples(None, seed=cfg.seed)
        rows = [{"prompt": encode_prompt(ex.prompt), "reference": ex.reference} for ex in pool[: ws.examples]
                if ex.reference is not None]
        if not rows:
            raise ValueError("policy.warmstart: the task has no reference answers to fine-tune on")
        learners = rt.learners(base)
        learners.set_metrics_dir(rt.rd.initial_dir)
        steps = -(-len(rows) // (ws.micro_batch_size * cfg.resources.learners)) * ws.epochs
        with rt.progress(f"warm start: SFT on {len(rows)} reference answers", total=steps,
                         watch_lines=rt.rd.initial_dir / "train_metrics.jsonl"):
            summary = learners.sft_round(rows, ws)
        info["warmstart"] = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
        learners.save_hf(target)  # atomic: written beside, then renamed into place
        rt.rd.manifest["initial_policy"] = str(target)
    else:
        rt.rd.manifest["initial_policy"] = str(base)
    rt.rd.save()
    info.update(evaluate_policy(rt, initial_policy(rt), version=0, out_dir=rt.rd.initial_dir))
    return info


# ----------------------------------------------------------------------------------------- the stages


def generate(rt, k: int, prompts: list) -> dict[str, Any]:
    from selfplay.records import generations_table

    if rt.cfg.task.type == "pairs":
        return {"skipped": "offline pairs: nothing to generate"}
    it = rt.rd.iter_dir(k)
    pool = rt.generators(policy_before(rt, k), version=k)
    pool.expect_version(k)
    sampling = rt.sampling(seed=rt.cfg.seed * 100_003 + k)
    shards = -(-len(prompts) // rt.cfg.generation.shard_size)
    kill = faults.shard_hook("generate", k)
    with rt.progress(f"generate {len(prompts)} prompts x {sampling.n}", total=shards) as advance:

        def on_shard(index: int) -> None:
            advance()
            if kill is not None:
                kill(index)

        from selfplay.loop.prompt_source import generation_view

        completions, seconds = pool.generate(generation_view(prompts, rt.cfg.generation.prompt_template), sampling,
                                             shard_dir=it / "generations", on_shard=on_shard)
    table = generations_table(prompts, completions, iteration=k, policy_version=k)
    write_parquet(it / "generations.parquet", table)
    tokens = sum(len(t) for t in table.column("response_token_ids").to_pylist())
    info = {"prompts": len(prompts), "samples": table.num_rows, "tokens": tokens,
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
    if pool.last_run.get("unreadable"):  # damaged shards from an earlier attempt, generated again
        info["unreadable_shards"] = pool.last_run["unreadable"]
    if pool.last_run.get("restored"):  # generators Ray restarted mid-stage, and the shards they redid
        info.update(restored=pool.last_run["restored"], regenerated_shards=sorted(pool.last_run["attempts"]))
    return info


def judge(rt, k: int) -> dict[str, Any]:
    from selfplay.judges import judge_table

    if rt.cfg.task.type == "pairs":
        return {"skipped": "offline pairs: already judged"}
    it = rt.rd.iter_dir(k)
    generations = read_parquet(it / "generations.parquet")
    examples = _examples_by_id(sample_prompts(rt, k))
    with rt.progress(f"judge {generations.num_rows} samples ({rt.cfg.judge.type})"):
        judgments, stats = judge_table(generations, rt.judge, examples)
    write_parquet(it / "judgments.parquet", judgments)
    return stats


def build_pairs(rt, k: int) -> dict[str, Any]:
    from selfplay.pairs import build_pairs as make_pairs
    from selfplay.pairs import mix_previous

    it = rt.rd.iter_dir(k)
    if rt.cfg.task.type == "pairs":
        pairs = rt.task.pairs_table(iteration=k)
        stats = {"pairs": pairs.num_rows, "source": "dataset"}
    else:
        judgments = read_parquet(it / "judgments.parquet")
        pairs, stats = make_pairs(judgments, rt.cfg.pairing, rt.cfg.pairing_strategy, seed=rt.cfg.seed + k)
        if rt.cfg.pairing.mix_previous > 0 and k > 0:
            previous = read_parquet(rt.rd.iter_dir(k - 1) / "pairs.parquet")
            pairs = mix_previous(pairs, previous, rt.cfg.pairing.mix_previous, seed=rt.cfg.seed + k)
            stats["mixed_in"] = pairs.num_rows - stats.get("pairs", 0)
    write_parquet(it / "pairs.parquet", pairs)
    info = {**stats, "pairs": pairs.num_rows}
    if pairs.num_rows == 0:  # not an error: nothing to learn from this iteration, the policy stays as it is
        info["no_pairs"] = True
        reasons = [f"{v} {key[8:]}" for key, v in stats.items() if key.startswith("no_pair_") and v]
        rt.log(f"  iteration {k} has no preference pairs ({', '.join(reasons) or 'no prompts'}); "
               "the policy is kept unchanged")
    return info


def no_pairs(rt, k: int) -> bool:
    """True when iteration ``k`` built no pairs: its later stages keep the policy as it is."""
    return bool(rt.rd.stage_info(k, "pairs").get("no_pairs"))


def solved_share(rt, k: int) -> float | None:
    """Share of iteration ``k``'s training prompts whose samples were all correct (verifier score 1)."""
    info = rt.rd.stage_info(k, "pairs")
    prompts = info.get("prompts")
    return info.get("no_pair_all_correct", 0) / prompts if prompts else None


def reference_logps(rt, k: int) -> dict[str, Any]:
    """Reference log-probs for every pair, computed once and stored beside the pairs."""
    it = rt.rd.iter_dir(k)
    pairs = read_parquet(it / "pairs.parquet")
    if no_pairs(rt, k):
        write_parquet(it / "reference.parquet", pairs)
        return {"skipped": "no pairs"}
    learners = rt.learners(policy_before(rt, k))
    if rt.cfg.train.loss.reference_free:
        write_parquet(it / "reference.parquet", pairs)
        return {"skipped": "reference-free loss"}
    # `previous`: the weights the learner holds now (iteration k-1's policy). `initial`: loaded from disk.
    ref_dir = initial_policy(rt) if rt.cfg.train.reference == "initial" and k > 0 else None
    table = learners.compute_reference(pairs, model_path=ref_dir)
    write_parquet(it / "reference.parquet", table)
    return {"reference": rt.cfg.train.reference, "pairs": table.num_rows}


def train(rt, k: int) -> dict[str, Any]:
    if no_pairs(rt, k):
        return {"skipped": "no pairs", "steps": 0}
    it = rt.rd.iter_dir(k)
    table = read_parquet(it / "reference.parquet")
    learners = rt.learners(policy_before(rt, k))
    learners.set_counters(*rounds_before(rt, k))  # numbered by the run, not by this learner process's history
    ckpt = it / "checkpoint"
    if (ckpt / "latest").exists():  # a round interrupted after a checkpoint: continue it, don't restart
        learners.load_checkpoint(ckpt)
    learners.set_metrics_dir(it)
    faults.watch_lines("train", k, it / "train_metrics.jsonl")
    steps = -(-table.num_rows // (rt.cfg.train.micro_batch_size * rt.cfg.train.gradient_accumulation_steps
                                  * rt.cfg.resources.learners)) * rt.cfg.train.epochs
    with rt.progress(f"train {rt.cfg.train.loss.type} on {table.num_rows} pairs", total=steps,
                     watch_lines=it / "train_metrics.jsonl"):
        summary = learners.train_round(table, rt.cfg.train.for_iteration(k), checkpoint_dir=ckpt)
    rt.trained_iteration = k
    info = {key: summary[key] for key in ("steps", "kept", "dropped", "truncated", "resumed_at_step",
                                          "trainable_params", "total_params") if key in summary}
    info.update(round_metrics(it / "train_metrics.jsonl"))
    info.update(rejected_drift(learners, table, rt.cfg.train))
    return info


def rounds_before(rt, k: int) -> tuple[int, int]:
    """(rounds, optimizer steps) the learner has run before iteration ``k``'s round, read from the manifest:
    the warm start, then each earlier iteration that trained. A learner restarted by a resume numbers its
    round and steps as an uninterrupted one would, so the step logs of both runs are the same."""
    warm = rt.rd.manifest.get("prepare", {}).get("warmstart") or {}
    rounds, steps = (1, int(warm.get("steps", 0))) if warm else (0, 0)
    for j in range(k):
        done = int(rt.rd.stage_info(j, "train").get("steps", 0) or 0)
        rounds, steps = rounds + (done > 0), steps + done
    return rounds, steps


def round_metrics(path: Path) -> dict[str, Any]:
    """Summary of a round from its per-step log, which spans every attempt of an interrupted round
    (a resumed round appends; a step logged twice counts once, the last write wins)."""
    if not path.exists():
        return {}
    from selfplay.loop.rundir import read_jsonl

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


def rejected_drift(learners, table, cfg) -> dict[str, Any]:
    """How far the round moved the policy on its rejected responses: mean(log pi_ref(y) - log pi_new(y)).

    Not a KL estimate: the rejected responses are *selected* (the worst of n samples, or another policy's
    samples), not draws from the reference, so their mean log-ratio is biased in an unknown direction.
    It is reported as what it is, a drift of the rejected side (positive: the round pushed them down).
    """
    if cfg.loss.reference_free or "ref_rejected_logps" not in table.column_names:
        return {}
    sampled = [i for i, ids in enumerate(table.column("rejected_token_ids").to_pylist()) if ids is not None]
    if not sampled:
        return {}
    after = learners.compute_reference(table.take(sampled))
    before = table.take(sampled).column("ref_rejected_logps").to_pylist()
    now = after.column("ref_rejected_logps").to_pylist()
    diffs = [b - a for b, a in zip(before, now) if b is not None and a is not None]
    return {"rejected_drift": sum(diffs) / len(diffs)} if diffs else {}


def export(rt, k: int) -> dict[str, Any]:
    it = rt.rd.iter_dir(k)
    if no_pairs(rt, k):  # the unchanged policy, as this iteration's (hard links: no bytes copied)
        from selfplay.atomic import replace_dir

        source = policy_before(rt, k)
        replace_dir(it / "policy", lambda tmp: _link_tree(source, tmp))
        return {"policy": str(it / "policy"), "unchanged_from": str(source)}
    learners = rt.learners(policy_before(rt, k))
    if rt.trained_iteration != k:  # resumed after a crash between train and export
        learners.load_checkpoint(it / "checkpoint")
        rt.trained_iteration = k
    learners.save_hf(it / "policy")  # atomic: written beside, then renamed into place
    return {"policy": str(it / "policy")}


def sync(rt, k: int) -> dict[str, Any]:
    it = rt.rd.iter_dir(k)
    version = k + 1
    if not rt.has_generators:  # resumed: start the generators directly on the exported policy
        rt.generators(it / "policy", version=version)
        info = {"version": version, "method": "load from disk (resumed)"}
    elif no_pairs(rt, k):  # same weights under the next version number, loaded through the verified path
        rt.generators(it / "policy", version=version).load_dir(it / "policy", version)
        info = {"version": version, "method": "unchanged policy reloaded from disk"}
    else:
        info = {"version": version, **rt.push_weights(version, it / "policy")}
    faults.kill_point("sync", k)  # crash tests: generators hold the new weights, the manifest does not say so
    return info


def eval_due(cfg, k: int) -> bool:
    """Iteration k is evaluated every ``evaluation.every`` iterations, and the last one always."""
    return (k + 1) % cfg.evaluation.every == 0 or k == cfg.iterations - 1


def evaluate(rt, k: int) -> dict[str, Any]:
    it = rt.rd.iter_dir(k)
    if not eval_due(rt.cfg, k):  # no eval.json: status, report and the summary show "-" for this iteration
        return {"skipped": f"evaluation.every={rt.cfg.evaluation.every}"}
    info = evaluate_policy(rt, it / "policy", version=k + 1, out_dir=it)
    train_info = rt.rd.stage_info(k, "train")
    if "rejected_drift" in train_info:
        info["rejected_drift"] = drift = train_info["rejected_drift"]
        write_json(it / "eval.json", {**json.loads((it / "eval.json").read_text()), "rejected_drift": drift})
    return info


# --------------------------------------------------------------------------------------- evaluation


def evaluate_policy(rt, policy_dir: Path, version: int, out_dir: Path) -> dict[str, Any]:
    """Held-out evaluation: task accuracy (verifier), win rate vs the initial policy, mean judge score."""
    from selfplay.loop.evaluation import score_eval

    n = rt.cfg.evaluation.num_prompts
    if n == 0:
        write_json(out_dir / "eval.json", {"version": version, "num_prompts": 0})
        return {}
    examples = rt.task.eval_examples(n, seed=rt.cfg.seed)
    pool = rt.generators(policy_dir, version=version)
    pool.expect_version(version)
    sampling = rt.sampling(seed=rt.cfg.seed, eval_mode=True)
    completions, _ = pool.generate(examples, sampling, shard_dir=None)
    responses = [c[0].text for c in completions]
    baseline = rt.rd.initial_dir / "eval_generations.parquet"
    result, table = score_eval(rt, examples, responses, baseline if version > 0 else None)
    result = {"version": version, "num_prompts": len(examples), **result}
    write_parquet(out_dir / "eval_generations.parquet", table)
    write_json(out_dir / "eval.json", result)
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _link_tree(source: Path, target: Path) -> None:
    """Copy the files of ``source`` into ``target`` as hard links (a plain copy across filesystems)."""
    import os
    import shutil

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, dirs_exist_ok=True)


def finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def as_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows)
