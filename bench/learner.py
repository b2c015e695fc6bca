"""Learner throughput: our DeepSpeed learner's DPO round vs TRL's ``DPOTrainer``, in one process.

    python -m bench.learner [--pairs 96] [--batch 8] [--threads 1] [--preset small]

Same model (the ``small`` preset, ~14M parameters, char tokenizer, built offline), same pairs, batch size,
learning rate, fp32 and thread count for both. TRL runs at its fastest fair setting: reference log-probs
precomputed (``precompute_ref_log_probs=True``, done in its constructor), no gradient checkpointing, no
bf16 autocast, no logging/saving, in-process data loading. Our side: ``compute_reference`` (untimed
for the main number, like TRL's precompute) then ``train_round`` (ZeRO-0, world size 1, no Ray).

Runs alternate (ours, TRL, ours, TRL) so that drift in machine load hits both; each run starts from the
same initial weights. Printed: pairs/s of each run's training (main number), the end-to-end time
including reference log-probs and tokenisation, and finally the ratio of the best runs.

The pairs have varied lengths (arithmetic and list-sorting prompts, answers of 1 to ~60 characters), as
self-play generations do; length-bucketed batching is one of our learner's design choices.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import tempfile
import time
from pathlib import Path


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < 0.5:
            a, b = rng.randint(0, 9999), rng.randint(0, 9999)
            prompt, good = f"{a}+{b}=", str(a + b)
            bad = str(a + b + rng.randint(1, 99))
        else:
            xs = [rng.randint(0, 999) for _ in range(rng.randint(2, 14))]
            prompt, good = f"sort: {','.join(map(str, xs))}", ",".join(map(str, sorted(xs)))
            bad = ",".join(map(str, rng.sample(xs, len(xs))))
        rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return rows


def run_ours(path: Path, pairs: list[dict], args):
    import pyarrow as pa

    from selfplay.config.schema import TrainConfig
    from selfplay.train import Learner

    cfg = TrainConfig(learning_rate=args.lr, micro_batch_size=args.batch, epochs=1, warmup_ratio=0.0,
                      lr_schedule="constant", max_grad_norm=1e9,
                      length_grouping="megabatch")  # length-bucketed, as measured in the README
    # A fresh learner per run, shut down before TRL runs: a live process group would make TRL's
    # accelerate wrap its model in DistributedDataParallel (slower, and not TRL's fastest setting).
    # Chat prompts, JSON-encoded as the driver stores them: rendered with the chat template, like TRL's.
    rows = [{**p, "prompt": json.dumps([{"role": "user", "content": p["prompt"]}])} for p in pairs]
    learner = Learner(path, cfg, threads=args.threads)
    try:
        t0 = time.perf_counter()
        table = learner.compute_reference(pa.Table.from_pylist(rows))
        t1 = time.perf_counter()
        summary = learner.train_round(table)
        t2 = time.perf_counter()
    finally:
        learner.shutdown()
    return {"train_s": t2 - t1, "total_s": t2 - t0, "loss_last": summary["loss_last"], "tokens": tokens(path, rows)}


def tokens(path: Path, rows: list[dict]) -> int:
    """Non-pad tokens of (prompt + chosen) and (prompt + rejected), counted as TRL's ``num_tokens``."""
    import pyarrow as pa
    from transformers import AutoTokenizer

    from selfplay.config.schema import TrainConfig
    from selfplay.train.data import encode_pairs

    data = encode_pairs(pa.Table.from_pylist(rows), AutoTokenizer.from_pretrained(path), TrainConfig())
    return sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(data.prompts, data.completions["chosen"],
                                                                data.completions["rejected"]))


def run_trl(path: Path, pairs: list[dict], args, out_dir: str):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}],
                               "chosen": [{"role": "assistant", "content": p["chosen"]}],
                               "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    tok = AutoTokenizer.from_pretrained(path)
    cfg = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.batch, num_train_epochs=1, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1e9, precompute_ref_log_probs=True,
        precompute_ref_batch_size=2 * args.batch, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True,
        dataloader_num_workers=0, max_length=None, seed=0, dataset_num_proc=None,
    )
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)
    t1 = time.perf_counter()
    out = trainer.train()
    t2 = time.perf_counter()
    return {"train_s": t2 - t1, "total_s": t2 - t0, "loss_last": out.training_loss,
            "tokens": int(next((float(h["num_tokens"]) for h in reversed(trainer.state.log_history)
                                if "num_tokens" in h), -1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from selfplay.env import setup_env

    setup_env(args.threads)
    os.environ.setdefault("ACCELERATE_USE_CPU", "1")
    import torch

    from selfplay.models import build_policy, count_parameters

    tmp = tempfile.mkdtemp(prefix="bench_learner_")
    path = build_policy(Path(tmp) / args.preset, preset=args.preset, tokenizer="char", seed=0)
    pairs = make_pairs(args.pairs)
    print(f"model {args.preset}: {count_parameters(path) / 1e6:.1f}M params; {len(pairs)} pairs, batch "
          f"{args.batch}, threads {torch.get_num_threads()}, fp32, 1 epoch")
    ours, trl = [], []
    for r in range(args.repeats):
        res = run_ours(path, copy.deepcopy(pairs), args)
        ours.append(res)
        print(f"run {2 * r + 1} ours: {len(pairs) / res['train_s']:7.2f} pairs/s train ({res['train_s']:.1f}s); "
              f"end-to-end {res['total_s']:.1f}s; last loss {res['loss_last']:.4f}; tokens {res['tokens']}", flush=True)
        res = run_trl(path, copy.deepcopy(pairs), args, tmp)
        trl.append(res)
        print(f"run {2 * r + 2} TRL : {len(pairs) / res['train_s']:7.2f} pairs/s train ({res['train_s']:.1f}s); "
              f"end-to-end {res['total_s']:.1f}s; mean loss {res['loss_last']:.4f}; tokens {res['tokens']}", flush=True)
    best_ours = len(pairs) / min(r["train_s"] for r in ours)
    best_trl = len(pairs) / min(r["train_s"] for r in trl)
    e2e = min(r["total_s"] for r in trl) / min(r["total_s"] for r in ours)
    print(f"ours {best_ours:.2f} pairs/s, TRL {best_trl:.2f} pairs/s (best runs); end-to-end ratio {e2e:.2f}x")
    print(f"ratio ours/TRL (train pairs/s): {best_ours / best_trl:.2f}x")


if __name__ == "__main__":
    main()
