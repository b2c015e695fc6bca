"""Both sides of the end-to-end TRL comparison (``test_trl_end_to_end.py``): the pairs, a round of TRL 1.16's
``DPOTrainer`` and a round of our ``Learner`` on them, and the comparison of what the two produced.

Kept out of the test module so that a learner rank started as a plain process (``rank_main``, world size 2)
imports this file and not the tests. Nothing here is a stand-in: both sides train the real model files.
"""

from __future__ import annotations

import json
import math
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

BETA = 0.1
LR = 1e-3
"""Far above a practitioner's DPO rate on purpose: a few steps must move a random nano model's weights
well clear of float noise, so that a wrong gradient shows in the final weights."""
CLIP = 5.0
"""The pre-clip gradient norms of these rounds lie on both sides of it, so clipping acts on some steps."""

WORDS = ("apple", "river", "stone", "seven", "cloud", "index", "order", "green", "value", "table", "light",
         "sum", "list", "sort", "north", "paper", "glass", "music", "plant", "eight")


def make_pairs(n: int, seed: int = 0, prompt_chars: int = 320) -> list[dict[str, Any]]:
    """``n`` pairs (with ``pair_id``): prompts of about ``prompt_chars`` characters (context, then a task
    over a list of numbers), chosen and rejected answers of different lengths (a correct answer against a
    partial list with filler words, from a fifth to twice as long)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        xs = [rng.randint(0, 999) for _ in range(rng.randint(10, 22))]
        task = f"\nSort these numbers in ascending order and give the sum: {', '.join(map(str, xs))}"
        story = " ".join(rng.choice(WORDS) for _ in range(prompt_chars // 3))[: max(20, prompt_chars - len(task))]
        good = f"Sorted: {', '.join(map(str, sorted(xs)))}. Sum: {sum(xs)}."
        shown = rng.sample(xs, max(1, int(len(xs) * rng.uniform(0.1, 1.0))))
        bad = f"{', '.join(map(str, shown))} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12)))
        rows.append({"prompt": f"Notes: {story}.{task}", "chosen": good, "rejected": bad.strip(), "pair_id": i})
    return rows


def chat_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Our pairs table: the prompt as a JSON-encoded chat (as the driver stores it), answers as text, and
    ``*_token_ids`` where a row carries them."""
    out = []
    for r in rows:
        row = {"prompt": json.dumps([{"role": "user", "content": r["prompt"]}]), "chosen": r["chosen"],
               "rejected": r["rejected"], "pair_id": r["pair_id"]}
        for key in ("chosen_token_ids", "rejected_token_ids"):
            if key in r:
                row[key] = r[key]
        out.append(row)
    return pa.Table.from_pylist(out)


def train_config(accumulation: int, zero_stage: int, micro_batch_size: int = 1) -> Any:
    from selfplay.config.schema import LossConfig, TrainConfig

    return TrainConfig(loss=LossConfig(type="sigmoid", beta=BETA), learning_rate=LR, lr_schedule="constant",
                       warmup_ratio=0.0, epochs=1, micro_batch_size=micro_batch_size,
                       gradient_accumulation_steps=accumulation, max_grad_norm=CLIP, weight_decay=0.0,
                       zero_stage=zero_stage, max_prompt_length=512, max_completion_length=512,
                       length_grouping="random")


@dataclass
class Round:
    """What one side produced: per table row the tokens and reference log-probs, per optimizer step the
    logged values (in the order the steps ran), and the final weights."""

    order: list[list[int]]
    """Table rows of each optimizer step, in the order the steps ran."""
    ref: dict[int, tuple[float, float]]
    """Table row -> (reference chosen, reference rejected) summed log-probs."""
    steps: list[dict[str, float]]
    """Per step: loss, grad_norm, chosen_reward, rejected_reward, chosen_logps, rejected_logps."""
    weights: dict[str, torch.Tensor]
    tokens: dict[int, tuple[list[int], list[int], list[int]]] = field(default_factory=dict)
    """Table row -> (prompt, chosen, rejected) token ids."""


# ------------------------------------------------------------------------------------------------- ours
def _last_partial_plan(record: list):
    """``plan_round`` with its short steps (fewer pairs than the fullest) moved last, in order otherwise.

    Our plan shuffles the order of optimizer steps, so the step with the remainder may come anywhere;
    HF's ``Trainer`` always ends an epoch with its short accumulation window. The same steps, in an order
    both can run."""
    from selfplay.train import batches

    def plan(*args: Any, **kwargs: Any) -> list:
        steps = batches.plan_round(*args, **kwargs)
        full = max(step.count for _, step in steps)
        steps = sorted(steps, key=lambda es: es[1].count < full)
        record.append(steps)
        return steps

    return plan


def run_ours(model_dir: Path, table: pa.Table, cfg: Any, *, rank: int = 0, world_size: int = 1,
             master_port: int | None = None) -> Round | None:
    """A reference pass and one DPO round of our ``Learner`` (rank ``rank`` of ``world_size``); the
    ``Round`` on rank 0, None elsewhere."""
    import selfplay.train.learner as learner_mod
    from selfplay.train import Learner
    from selfplay.train.data import encode_pairs

    plans: list = []
    real_plan = learner_mod.plan_round
    learner_mod.plan_round = _last_partial_plan(plans)
    steps: list[dict[str, float]] = []
    addr = "127.0.0.1" if world_size > 1 else None
    learner = Learner(model_dir, cfg, rank=rank, world_size=world_size, seed=0, master_addr=addr,
                      master_port=master_port, threads=1)
    try:
        scored = learner.compute_reference(table)
        learner.train_round(scored, on_step=steps.append, final_checkpoint=False)
        buckets = learner.export_weights()
        data = encode_pairs(table, learner.tokenizer, cfg)
    finally:
        learner.shutdown()
        learner_mod.plan_round = real_plan
    if rank != 0:
        return None
    from selfplay.sync.buckets import unpack_bucket

    weights: dict[str, torch.Tensor] = {}
    for blob in buckets:
        weights.update(unpack_bucket(blob)[0])
    rows = [int(r) for r in data.rows]
    order = [[rows[i] for m in step.micros for i, real in zip(m.indices, m.real) if real] for _, step in plans[0]]
    ref = {int(r): (c, j) for r, c, j in zip(range(scored.num_rows), scored.column("ref_chosen_logps").to_pylist(),
                                            scored.column("ref_rejected_logps").to_pylist())}
    tokens = {r: (p, c, j) for r, p, c, j in zip(rows, data.prompts, data.completions["chosen"],
                                                   data.completions["rejected"])}
    keys = ("loss", "grad_norm", "chosen_reward", "rejected_reward", "chosen_logps", "rejected_logps")
    return Round(order, ref, [{k: float(s[k]) for k in keys} for s in steps], weights, tokens)


def rank_main(rank: int, world_size: int, port: int, model_dir: str, table_path: str, cfg_json: str,
              out_path: str) -> None:
    """One rank of a ``world_size`` learner world in a plain process (``multiprocessing`` spawn target)."""
    import pyarrow.parquet as pq

    from selfplay.config.schema import TrainConfig
    from selfplay.env import setup_env

    setup_env(threads=1)
    cfg = TrainConfig.model_validate_json(cfg_json)
    result = run_ours(Path(model_dir), pq.read_table(table_path), cfg, rank=rank, world_size=world_size,
                      master_port=port)
    if result is not None:
        Path(out_path).write_bytes(pickle.dumps(result))


# ------------------------------------------------------------------------------------------------- TRL
def run_trl(model_dir: Path, rows: list[dict[str, Any]], order: list[int], accumulation: int, out_dir: Path,
            micro_batch_size: int = 1) -> Round:
    """TRL 1.16's ``DPOTrainer`` on ``rows`` taken in ``order`` (table rows), ``micro_batch_size`` pairs per
    micro-batch, ``accumulation`` micro-batches per optimizer step, at world size 1."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": rows[i]["prompt"]}],
                               "chosen": [{"role": "assistant", "content": rows[i]["chosen"]}],
                               "rejected": [{"role": "assistant", "content": rows[i]["rejected"]}]} for i in order])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    args = DPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=micro_batch_size,
        gradient_accumulation_steps=accumulation, num_train_epochs=1, learning_rate=LR, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=CLIP,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, beta=BETA, loss_type=["sigmoid"],
        precompute_ref_log_probs=True, precompute_ref_batch_size=4, train_sampling_strategy="sequential",
        max_length=None, disable_dropout=True, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    prepared = trainer.train_dataset
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/chosen" in h]
    steps = [{"loss": h["loss"], "grad_norm": h["grad_norm"], "chosen_reward": h["rewards/chosen"],
              "rejected_reward": h["rewards/rejected"], "chosen_logps": h["logps/chosen"],
              "rejected_logps": h["logps/rejected"]} for h in logs]
    ref = {i: (float(c), float(r)) for i, c, r in zip(order, prepared["ref_chosen_logps"],
                                                     prepared["ref_rejected_logps"])}
    tokens = {i: (list(p), list(c), list(r)) for i, p, c, r in zip(order, prepared["prompt_ids"],
                                                                   prepared["chosen_ids"], prepared["rejected_ids"])}
    weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}  # a tied head once
    return Round([], ref, steps, weights, tokens)


# ------------------------------------------------------------------------------------------- comparison
LOGP_ATOL = 2e-3
"""Summed log-probs (a few hundred nats over up to ~200 tokens): fp32, two different forward layouts."""
STEP_RTOL = 1e-4
"""Loss and pre-clip gradient norm of a step, relative."""
REWARD_ATOL = 1e-4
"""Rewards are beta x (policy - reference) log-probs: at step 1 both are float noise around 0."""
WEIGHT_ATOL = LR
"""Per weight, after the round: one learning rate. Adam's step divides each gradient entry by its own
running magnitude, so an entry whose gradient is float noise in some step moves by a noise-driven
fraction of lr (seen: one entry in 16384 off by 0.47 lr, every other one within 0.09 lr)."""
UPDATE_RTOL = 2e-2
"""Per tensor: |our update - TRL's update| / |TRL's update| (Frobenius norms, the update being the change
from the start weights): 1.9e-3 at most seen (that one entry), about 1 under a planted shift or padding
bug. One Adam entry flipped by noise in a 128x128 matrix would be about 1.6e-2."""


def compare(ours: Round, theirs: Round, start: dict[str, torch.Tensor]) -> None:
    """Assert that the two rounds agree: reference log-probs per row, then per step loss, gradient norm,
    rewards and policy log-probs, then every weight and every tensor's update from ``start``."""
    assert sorted(ours.ref) == sorted(theirs.ref)
    for row, (c, r) in theirs.ref.items():
        oc, orj = ours.ref[row]
        assert math.isclose(oc, c, rel_tol=0, abs_tol=LOGP_ATOL), ("ref chosen", row, oc, c)
        assert math.isclose(orj, r, rel_tol=0, abs_tol=LOGP_ATOL), ("ref rejected", row, orj, r)
    assert len(ours.steps) == len(theirs.steps), (len(ours.steps), len(theirs.steps))
    for s, (a, b) in enumerate(zip(ours.steps, theirs.steps), start=1):
        for key, atol in (("loss", 1e-6), ("grad_norm", 1e-6), ("chosen_reward", REWARD_ATOL),
                          ("rejected_reward", REWARD_ATOL)):
            assert math.isclose(a[key], b[key], rel_tol=STEP_RTOL, abs_tol=atol), (f"step {s} {key}", a[key], b[key])
        for key in ("chosen_logps", "rejected_logps"):
            assert math.isclose(a[key], b[key], rel_tol=0, abs_tol=LOGP_ATOL), (f"step {s} {key}", a[key], b[key])
    missing = sorted(set(theirs.weights) - set(ours.weights))
    assert not missing, f"weights TRL has and we do not export: {missing}"
    for name, value in theirs.weights.items():
        diff = ours.weights[name].float() - value.float()
        assert float(diff.abs().max()) <= WEIGHT_ATOL, (name, float(diff.abs().max()))
        update = float((value.float() - start[name].float()).norm())
        assert float(diff.norm()) <= UPDATE_RTOL * update, (name, float(diff.norm()) / update)


def max_deviation(ours: Round, theirs: Round, start: dict[str, torch.Tensor]) -> dict[str, float]:
    """The largest difference of each compared quantity (for reporting and setting tolerances)."""
    out = {"ref": max(max(abs(ours.ref[r][0] - c), abs(ours.ref[r][1] - j)) for r, (c, j) in theirs.ref.items())}
    for key in ("loss", "grad_norm", "chosen_reward", "rejected_reward", "chosen_logps", "rejected_logps"):
        out[key] = max(abs(a[key] - b[key]) / max(abs(b[key]), 1e-12) if key in ("loss", "grad_norm") else
                       abs(a[key] - b[key]) for a, b in zip(ours.steps, theirs.steps))
    out["weights"] = max(float((ours.weights[k].float() - v.float()).abs().max()) for k, v in theirs.weights.items())
    out["update"] = max(float((ours.weights[k].float() - v.float()).norm() / (v.float() - start[k].float()).norm())
                        for k, v in theirs.weights.items())
    return out


def template_completions(model_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with ``chosen_token_ids``/``rejected_token_ids``: each answer's tokens as the chat template
    writes a whole assistant turn after the prompt (what TRL trains on), i.e. the template rendering of
    prompt + answer past the rendering of the prompt with the generation prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)

    def ids(messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
        out = tok.apply_chat_template(messages, tokenize=True, **kwargs)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    out = []
    for r in rows:
        prompt = [{"role": "user", "content": r["prompt"]}]
        head = ids(prompt, add_generation_prompt=True)
        row = dict(r)
        for key in ("chosen", "rejected"):
            full = ids([*prompt, {"role": "assistant", "content": r[key]}])
            assert full[: len(head)] == head, "the template renders the prompt differently before an answer"
            row[f"{key}_token_ids"] = full[len(head):]
        out.append(row)
    return out
