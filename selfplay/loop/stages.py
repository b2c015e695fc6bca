"""The stages of one iteration. Each reads its input artifact from the iteration directory, writes its
output atomically and returns a small dict of facts that the manifest records (and status shows).

A stage says what it needs: an :class:`Iteration` (k, its directory, the policy it starts from, its
seeds), derived from the run directory by :func:`iteration`, plus the parts it uses (the generator
pool, the judge, the learner group), which the driver passes in. ``rt`` gives the recipe, the run
directory, the task and the progress display; no stage reads what another left on it. The policy that
*generates* in iteration k is iteration k-1's ``policy/`` (or the initial one) and the policy that
*trains* starts from the same directory; which weights a running learner group holds is the group's to
say (``LearnerGroup.holds``). The driver picks the stage list (offline pairs, an iteration without
pairs), so the stages themselves do not branch on those cases. That is what makes every stage resumable.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay.config.schema import EvalConfig
from selfplay.loop import faults
from selfplay.loop.rundir import read_jsonl, read_parquet, write_json, write_parquet, write_text

# ------------------------------------------------------------------------------------------ helpers


def brief(info: dict[str, Any]) -> str:
    keys = ("samples", "pairs", "mean_score", "loss", "reward_accuracy", "accuracy", "win_rate", "max_diff",
            "trainable_params")
    parts = [f"{k}={info[k]:.4g}" if isinstance(info[k], float) else f"{k}={info[k]}" for k in keys if k in info]
    return " ".join(parts)


@dataclass(frozen=True)
class Iteration:
    """What a stage knows about its iteration, all derived from the run directory and the recipe."""

    k: int
    dir: Path  # the iteration directory
    policy_in: Path  # the policy it generates with and starts training from
    seed: int  # the run's seed

    @property
    def policy_out(self) -> Path:
        return self.dir / "policy"

    @property
    def version(self) -> int:
        """The policy version this iteration produces (the generators hold ``k`` while it generates)."""
        return self.k + 1

    @property
    def sample_seed(self) -> int:
        return self.seed * 100_003 + self.k

    @property
    def pair_seed(self) -> int:
        return self.seed + self.k


def iteration(rt, k: int) -> Iteration:
    return Iteration(k, rt.rd.iter_dir(k), policy_before(rt, k), rt.cfg.seed)


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


def prepare(rt, iterations_follow: bool = True) -> dict[str, Any]:
    """The starting policy (a preset built offline, or a local checkpoint), its warm start, its eval.

    The actors the stage does not wait on start beside it: with a warm start, the generators start on
    the base policy while the learners fine-tune, and load the result (verified, like a sync) before the
    evaluation; without one, the learners start while the generators evaluate (when iterations follow)."""
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
        early_generators = iterations_follow or cfg.evaluation.num_prompts > 0
        if early_generators:
            rt.start_generators(base, version=0)  # they load the warm-started policy below
        learners = rt.learners(base)
        learners.set_metrics_dir(rt.rd.initial_dir)
        steps = -(-len(rows) // (ws.micro_batch_size * cfg.resources.learners)) * ws.epochs
        with rt.progress(f"warm start: SFT on {len(rows)} reference answers", total=steps,
                         watch_lines=rt.rd.initial_dir / "train_metrics.jsonl"):
            summary = learners.sft_round(rows, ws)
        info["warmstart"] = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
        learners.save_hf(target)  # atomic: written beside, then renamed into place
        if early_generators:
            rt.generators(base, version=0).load_dir(target, 0)  # version 0 is the warm-started policy
        rt.rd.manifest["initial_policy"] = str(target)
    else:
        if iterations_follow:
            rt.start_learners(base)  # iteration 0 starts from ``base``: set up while the evaluation runs
        rt.rd.manifest["initial_policy"] = str(base)
    rt.rd.save()
    info.update(evaluate_policy(rt, initial_policy(rt), version=0, out_dir=rt.rd.initial_dir))
    return info


# ----------------------------------------------------------------------------------------- the stages


def generate(rt, it: Iteration, prompts: list, pool) -> dict[str, Any]:
    pool.expect_version(it.k)
    sampling = rt.sampling(seed=it.sample_seed)
    shards = -(-len(prompts) // rt.cfg.generation.shard_size)
    faults.hang_point("generate", it.k)
    kill = faults.shard_hook("generate", it.k)
    ahead = scored_by_shard(rt, it) and room_beside_generation(rt.cfg)
    with rt.progress(f"generate {len(prompts)} prompts x {sampling.n}", total=shards) as advance:

        def on_shard(index: int) -> None:
            advance()
            if kill is not None:
                kill(index)
            if ahead:
                _prescore_shard(rt, it, prompts, index)

        from selfplay.loop.prompt_source import generation_view

        completions, seconds = pool.generate(generation_view(prompts, rt.cfg.generation.prompt_template), sampling,
                                             shard_dir=it.dir / "generations", on_shard=on_shard)
    from selfplay.records import generations_table

    table = generations_table(prompts, completions, iteration=it.k, policy_version=it.k)
    write_parquet(it.dir / "generations.parquet", table)
    tokens = sum(len(t) for t in table.column("response_token_ids").to_pylist())
    info = {"prompts": len(prompts), "samples": table.num_rows, "tokens": tokens,
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
            "generator_threads": [i.get("threads") for i in pool.info()]}  # one entry per replica that ran
    if pool.last_run.get("unreadable"):  # damaged shards from an earlier attempt, generated again
        info["unreadable_shards"] = pool.last_run["unreadable"]
    if pool.last_run.get("restored"):  # generators Ray restarted mid-stage, and the shards they redid
        info.update(restored=pool.last_run["restored"], regenerated_shards=sorted(pool.last_run["attempts"]))
    return info


# Pairing strategies whose pairs hold (nearly) every sample: SPIN's `reference` (each sample is a rejected
# side) and `all_pairs`. The others use 1-2 of n samples, and scoring all n would cost more than it saves.
EVERY_SAMPLE = ("reference", "all_pairs")


def scored_by_shard(rt, it: Iteration) -> bool:
    """Whether iteration ``it``'s reference pass scores its samples shard by shard (:func:`shard_groups`),
    and so can score each shard on the learners while the generators sample the next: when the
    reference is the weights the learners hold while generating (the previous policy) and the pairs
    are built from (nearly) every sample of this iteration (:data:`EVERY_SAMPLE`). A decision from the
    recipe alone, so a resumed run groups alike."""
    cfg = rt.cfg
    return (cfg.task.type != "pairs" and not cfg.train.loss.reference_free and cfg.pairing_strategy in EVERY_SAMPLE
            and (cfg.train.reference == "previous" or it.k == 0))


def room_beside_generation(cfg) -> bool:
    """Whether the learners may score shards while the generators sample: with GPU learners, or when the
    threads of every learner and generator fit this machine's cores (with `auto` replicas and threads,
    generation alone takes every core, so it does not). On a 2-core machine with 2 threads per actor,
    scoring beside vLLM made generation 5.7x slower (bench.iteration --threads 2: 11.3 s against 2.0 s);
    grouping by shard, and so the numbers, do not depend on this."""
    from selfplay.config.cores import machine_cores, resolve

    if cfg.resources.learner_gpus:
        return True
    c = resolve(cfg, machine_cores(), cluster=False)  # a run's cfg is resolved already: read back as set
    return cfg.resources.learners * c.learner_threads + c.replicas * c.generator_threads <= c.cores


def shard_groups(rt, it: Iteration, generations) -> list:
    """One table of (prompt, completion) sequences per generation shard (``records.reference_sequences``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    size = rt.cfg.generation.shard_size
    ids = generations.column("prompt_id").to_pylist()
    index = {pid: i // size for i, pid in enumerate(dict.fromkeys(ids))}  # prompt i is in shard i // size
    shard = pa.array([index[pid] for pid in ids])
    return [_shard_sequences(rt, generations.filter(pc.equal(shard, s)))
            for s in range(max(index.values(), default=-1) + 1)]


def _shard_sequences(rt, generations):
    """One shard's sequences: both paths (ahead and in the stage) build a group here, so they agree."""
    from selfplay.records import reference_sequences

    return reference_sequences(generations, with_reference=rt.cfg.pairing_strategy == "reference")


def _prescore_shard(rt, it: Iteration, prompts: list, index: int) -> None:
    """Hand shard ``index``'s sequences to the learners, if they are up (never waits for them)."""
    learners = rt.ready_learners()
    if learners is None:
        return
    from selfplay.generate.shards import read_shard, shard_path
    from selfplay.records import generations_table

    size = rt.cfg.generation.shard_size
    completions = read_shard(shard_path(it.dir / "generations", index))
    table = generations_table(prompts[index * size:(index + 1) * size], completions, iteration=it.k,
                              policy_version=it.k)
    learners.prescore(_shard_sequences(rt, table))


def judge(rt, it: Iteration, judge) -> dict[str, Any]:
    from selfplay.judges import judge_table

    generations = read_parquet(it.dir / "generations.parquet")
    examples = _examples_by_id(sample_prompts(rt, it.k))
    with rt.progress(f"judge {generations.num_rows} samples ({rt.cfg.judge.type})"):
        judgments, stats = judge_table(generations, judge, examples)
    write_parquet(it.dir / "judgments.parquet", judgments)
    return stats


def build_pairs(rt, it: Iteration) -> dict[str, Any]:
    from selfplay.pairs import build_pairs as make_pairs
    from selfplay.pairs import mix_previous

    judgments = read_parquet(it.dir / "judgments.parquet")
    pairs, stats = make_pairs(judgments, rt.cfg.pairing, rt.cfg.pairing_strategy, seed=it.pair_seed)
    if rt.cfg.pairing.mix_previous > 0 and it.k > 0:
        previous = read_parquet(rt.rd.iter_dir(it.k - 1) / "pairs.parquet")
        pairs = mix_previous(pairs, previous, rt.cfg.pairing.mix_previous, seed=it.pair_seed)
        stats["mixed_in"] = pairs.num_rows - stats.get("pairs", 0)
    return _write_pairs(rt, it, pairs, stats)


def dataset_pairs(rt, it: Iteration) -> dict[str, Any]:
    """Offline pairs: iteration k's chunk of the task's pairs dataset (nothing is generated or judged)."""
    pairs = rt.task.pairs_table(iteration=it.k)
    return _write_pairs(rt, it, pairs, {"pairs": pairs.num_rows, "source": "dataset"})


def _write_pairs(rt, it: Iteration, pairs, stats: dict[str, Any]) -> dict[str, Any]:
    write_parquet(it.dir / "pairs.parquet", pairs)
    info = {**stats, "pairs": pairs.num_rows}
    if pairs.num_rows == 0:  # not an error: nothing to learn from this iteration, the policy stays as it is
        from selfplay.pairs import no_pair_hint

        info["no_pairs"] = True
        hint = no_pair_hint(stats)
        if hint:
            info["hint"] = hint
        rt.log(f"  iteration {it.k} has no preference pairs, so the policy is kept unchanged: "
               f"{hint or 'no prompts'}")
    return info


def no_pairs(rt, k: int) -> bool:
    """True when iteration ``k`` built no pairs: its later stages keep the policy as it is."""
    return bool(rt.rd.stage_info(k, "pairs").get("no_pairs"))


def solved_share(rt, k: int) -> float | None:
    """Share of iteration ``k``'s training prompts whose samples were all correct (verifier score 1)."""
    info = rt.rd.stage_info(k, "pairs")
    prompts = info.get("prompts")
    return info.get("no_pair_all_correct", 0) / prompts if prompts else None


def reference_logps(rt, it: Iteration, learners) -> dict[str, Any]:
    """Reference log-probs for every pair, computed once and stored beside the pairs."""
    from selfplay.records import pop_prescored

    pairs = read_parquet(it.dir / "pairs.parquet")
    if rt.cfg.train.loss.reference_free:
        write_parquet(it.dir / "reference.parquet", pairs)
        return {"skipped": "reference-free loss"}
    # `previous`: the weights the learner holds now (iteration k-1's policy). `initial`: loaded from disk.
    ref_dir = initial_policy(rt) if rt.cfg.train.reference == "initial" and it.k > 0 else None
    groups = shard_groups(rt, it, read_parquet(it.dir / "generations.parquet")) if scored_by_shard(rt, it) else None
    table, prescored = pop_prescored(learners.compute_reference(pairs, model_path=ref_dir, groups=groups))
    write_parquet(it.dir / "reference.parquet", table)
    info = {"reference": rt.cfg.train.reference, "pairs": table.num_rows}
    if prescored is not None:  # shards scored on the learners while the generators sampled later ones
        info["prescored_shards"] = prescored
    return info


def train(rt, it: Iteration, learners) -> dict[str, Any]:
    table = read_parquet(it.dir / "reference.parquet")
    learners.set_counters(*rounds_before(rt, it.k))  # numbered by the run, not by this learner process's history
    ckpt = it.dir / "checkpoint"
    position = 0
    if (ckpt / "latest").exists():  # a round interrupted after a checkpoint: continue it, don't restart
        position = int((learners.load_checkpoint(ckpt).get("round") or {}).get("position", 0))
    trim_metrics(it.dir / "train_metrics.jsonl", position)
    learners.set_metrics_dir(it.dir)
    faults.watch_lines("train", it.k, it.dir / "train_metrics.jsonl")
    steps = -(-table.num_rows // (rt.cfg.train.micro_batch_size * rt.cfg.train.gradient_accumulation_steps
                                  * rt.cfg.resources.learners)) * rt.cfg.train.epochs
    with rt.progress(f"train {rt.cfg.train.loss.type} on {table.num_rows} pairs", total=steps,
                     watch_lines=it.dir / "train_metrics.jsonl"):
        summary = learners.train_round(table, rt.cfg.train.for_iteration(it.k), checkpoint_dir=ckpt,
                                       final_checkpoint=False)
    info = {key: summary[key] for key in ("steps", "kept", "dropped", "truncated", "resumed_at_step",
                                          "trainable_params", "total_params") if key in summary}
    info.update(round_metrics(it.dir / "train_metrics.jsonl"))
    info.update(rejected_drift(learners, table, rt.cfg.train, rt.cfg.evaluation.drift_samples))
    # The round's weights are saved as the iteration's policy, not as a DeepSpeed checkpoint: the next
    # round starts with fresh AdamW moments, so an end-of-round checkpoint would write twice the weights'
    # bytes of optimizer state that nothing reads (159 MB an iteration for the 14M `small` preset; about
    # 12 bytes a parameter in fp32 at any size). A crash before this stage is marked retrains the round, from
    # its last `checkpoint_every` checkpoint if it has one.
    learners.save_hf(it.policy_out)  # atomic: written beside, then renamed into place
    return {**info, "policy": str(it.policy_out)}


def trim_metrics(path: Path, position: int) -> None:
    """Keep the step lines of an interrupted attempt of this round up to ``position``, the step it
    continues after (0: it starts over), so the rerun's lines follow them and none is doubled (a line
    is written before its step's checkpoint, and a round without one restarts from its first step)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= position]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


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


def rejected_drift(learners, table, cfg, samples: int = EvalConfig.model_fields["drift_samples"].default
                   ) -> dict[str, Any]:
    """How far the round moved the policy on its rejected responses: mean(log pi_ref(y) - log pi_new(y)).

    Not a KL estimate: the rejected responses are *selected* (the worst of n samples, or another policy's
    samples), not draws from the reference, so their mean log-ratio is biased in an unknown direction.
    It is reported as what it is, a drift of the rejected side (positive: the round pushed them down).

    A diagnostic, so it is kept cheap: at most ``samples`` (``evaluation.drift_samples``; 0: not measured)
    rejected samples, spread evenly over the table, scored alone. Scoring every pair on both sides cost
    as much as the reference stage (2.4 s of a 17 s iteration of ``bench.iteration``).
    """
    if samples == 0 or cfg.loss.reference_free or "ref_rejected_logps" not in table.column_names:
        return {}
    sampled = [i for i, ids in enumerate(table.column("rejected_token_ids").to_pylist()) if ids is not None]
    if not sampled:
        return {}
    if len(sampled) > samples:
        sampled = [sampled[(j * len(sampled)) // samples] for j in range(samples)]
    after = learners.compute_reference(table.take(sampled), as_reference=False,  # TDPO keeps its reference
                                       only_rejected=True)
    before = table.take(sampled).column("ref_rejected_logps").to_pylist()
    now = after.column("ref_rejected_logps").to_pylist()
    diffs = [b - a for b, a in zip(before, now) if b is not None and a is not None]
    return {"rejected_drift": sum(diffs) / len(diffs)} if diffs else {}


def export(it: Iteration, learners: Callable[[], Any]) -> dict[str, Any]:
    """The round's policy directory, which the train stage wrote; its checkpoints are dropped now.

    A run directory from before that change has the round in ``checkpoint/`` instead: loaded and
    written out here. Either way ``checkpoint/`` (the round's `checkpoint_every` checkpoints, of weights
    and optimizer state) goes once the policy is on disk: a round that finished never resumes."""
    ckpt = it.dir / "checkpoint"
    if not it.policy_out.is_dir():
        group = learners()  # started only here: a resumed run whose train stage wrote the policy needs none
        if group.holds != str(ckpt):  # resumed after a crash between train and export: the round's weights
            group.load_checkpoint(ckpt)
        group.save_hf(it.policy_out)  # atomic: written beside, then renamed into place
    shutil.rmtree(ckpt, ignore_errors=True)
    return {"policy": str(it.policy_out)}


def sync(rt, it: Iteration, pool, learners) -> dict[str, Any]:
    """The exported policy into the generators: pushed through the configured sync, verified on a probe.
    With an adapter-only LoRA sync (``sync.lora``) only the adapter moves, plus the learner's base when the
    generators do not hold it yet (``lora_parts``; docs/lora.md says when)."""
    if pool is None:
        return _start_generators(rt, it)
    if rt.cfg.adapter_sync:
        from selfplay.sync.base import lora_parts

        base = learners.lora_base()
        parts = lora_parts(base, pool.policy.base, rt.cfg.train.reference)
        report = rt.weight_sync.push(learners, pool, it.version, parts)
        # where a restarted generator reloads from: base + adapter, or the merged policy
        pool.remember_policy(it.policy_out, it.version, base=None if parts == ("policy",) else base)
    else:
        report = rt.weight_sync.push(learners, pool, it.version)
        pool.remember_policy(it.policy_out, it.version)  # where a generator that Ray restarts reloads it from
    faults.kill_point("sync", it.k)  # crash tests: generators hold the new weights, the manifest does not say so
    return {"version": it.version, **report.as_dict()}


# -------------------------------------------------------------------- an iteration without pairs


def keep_reference(it: Iteration) -> dict[str, Any]:
    write_parquet(it.dir / "reference.parquet", read_parquet(it.dir / "pairs.parquet"))
    return {"skipped": "no pairs"}


def export_unchanged(it: Iteration) -> dict[str, Any]:
    """The unchanged policy, as this iteration's (hard links: no bytes copied)."""
    from selfplay.atomic import replace_dir

    replace_dir(it.policy_out, lambda tmp: _link_tree(it.policy_in, tmp))
    return {"policy": str(it.policy_out), "unchanged_from": str(it.policy_in)}


def sync_unchanged(rt, it: Iteration, pool) -> dict[str, Any]:
    """Same weights under the next version number, loaded through the verified path."""
    if pool is None:
        return _start_generators(rt, it)
    pool.load_dir(it.policy_out, it.version)
    faults.kill_point("sync", it.k)
    return {"version": it.version, "method": "unchanged policy reloaded from disk"}


def _start_generators(rt, it: Iteration) -> dict[str, Any]:
    """No generators run in this process (resumed): start them directly on the exported policy."""
    rt.generators(it.policy_out, version=it.version)
    faults.kill_point("sync", it.k)
    return {"version": it.version, "method": "load from disk (resumed)"}


def eval_due(cfg, k: int) -> bool:
    """Iteration k is evaluated every ``evaluation.every`` iterations, and the last one always."""
    return (k + 1) % cfg.evaluation.every == 0 or k == cfg.iterations - 1


def evaluate(rt, it: Iteration) -> dict[str, Any]:
    if not eval_due(rt.cfg, it.k):  # no eval.json: status, report and the summary show "-" for this iteration
        return {"skipped": f"evaluation.every={rt.cfg.evaluation.every}"}
    train_info = rt.rd.stage_info(it.k, "train")
    extra = {"rejected_drift": train_info["rejected_drift"]} if "rejected_drift" in train_info else {}
    return evaluate_policy(rt, it.policy_out, version=it.version, out_dir=it.dir, extra=extra)


# --------------------------------------------------------------------------------------- evaluation


def evaluate_policy(rt, policy_dir: Path, version: int, out_dir: Path,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Held-out evaluation: task accuracy (verifier), win rate vs the initial policy, mean judge score, and
    with ``evaluation.k`` pass@k / maj@k over ``k`` samples per prompt.
    ``extra`` (this round's numbers, e.g. the rejected drift) is written into ``eval.json`` with it."""
    from selfplay.loop.evaluation import score_eval

    n = rt.cfg.evaluation.num_prompts
    if n == 0:
        write_json(out_dir / "eval.json", {"version": version, "num_prompts": 0, **(extra or {})})
        return dict(extra or {})
    examples = rt.task.eval_examples(n, seed=rt.cfg.seed)
    pool = rt.generators(policy_dir, version=version)
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
    result, table = score_eval(rt, examples, responses, baseline if version > 0 else None, samples)
    result = {"version": version, "num_prompts": len(examples), **result, **(extra or {})}
    write_parquet(out_dir / "eval_generations.parquet", table)
    write_json(out_dir / "eval.json", result)
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _link_tree(source: Path, target: Path) -> None:
    """Copy the files of ``source`` into ``target`` as hard links (a plain copy across filesystems)."""
    import os

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, dirs_exist_ok=True)
