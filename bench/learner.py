"""Learner throughput: our DeepSpeed learner's DPO round vs TRL's ``DPOTrainer`` and a bare PyTorch loop.

    python -m bench.learner [--rows small medium] [--pairs 96] [--medium-pairs 8] [--batch 8] [--threads 1]
    python -m bench.learner --device cuda --dtype bf16      # one GPU (scripts/gpu_check.sh runs this)

Same model (the ``small`` preset, ~14M parameters, char tokenizer, built offline), same pairs, batch size,
learning rate, fp32 and thread count for both. TRL runs at its fastest fair setting: reference log-probs
precomputed (``precompute_ref_log_probs=True``, done in its constructor), no gradient checkpointing, no
bf16 autocast, no logging/saving, in-process data loading. Our side: ``compute_reference`` (untimed
for the main number, like TRL's precompute) then ``train_round`` (ZeRO-0, world size 1, no Ray).

A third contender, ``bare``, is the practical limit of this stack: a plain PyTorch DPO loop on the same
tokens (precomputed reference log-probs, one forward over chosen and rejected, AdamW, no DeepSpeed).
Rows: ``small`` (all three) and ``medium`` (~52M parameters) with 256-token completions (ours and bare;
``--medium-pairs``). Each run also prints its model FLOPs utilisation: 6 x parameters x trained tokens
per second over the fp32 ``torch.mm`` throughput measured at the start, at the same thread count.

Runs alternate (ours, TRL, bare, ours, ...) so that drift in machine load hits both; each run starts from the
same initial weights. Printed: pairs/s of each run's training (main number), the end-to-end time
including reference log-probs and tokenisation, and finally the ratio of the best runs.

``--device cuda`` runs ours and bare on one GPU (TRL is left out: its runner is pinned to the CPU, and the
GPU machines lent to this project do not have it). ``--dtype bf16`` trains ours with ``precision: bf16``
and bare under bf16 autocast (fp32 master weights, as DeepSpeed's bf16 keeps). The MFU denominator is then a
``torch.mm`` in that dtype on that device (8192 x 8192 on CUDA), measured in the same run.

The pairs have varied lengths (arithmetic and list-sorting prompts, answers of 1 to ~60 characters), as
self-play generations do; length-bucketed batching is one of our learner's design choices.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa

# torch, transformers, TRL and the selfplay modules that load torch are imported inside the functions that
# use them: main() sets the thread count (setup_env) first, and torch reads it when it loads.


def make_pairs(n: int, seed: int = 0, completion_chars: int | None = None) -> list[dict]:
    """``n`` pairs; with ``completion_chars``, sorting pairs whose answers are cut to exactly that many
    characters (one token each with the char tokenizer), for long-completion rows."""
    rng = random.Random(seed)
    rows = []
    if completion_chars is not None:
        for _ in range(n):
            xs = [rng.randint(100, 999) for _ in range(completion_chars // 4 + 2)]
            good = ",".join(map(str, sorted(xs)))[:completion_chars]
            bad = ",".join(map(str, rng.sample(xs, len(xs))))[:completion_chars]
            rows.append({"prompt": f"sort: {','.join(map(str, xs))}", "chosen": good, "rejected": bad})
        return rows
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
    from selfplay.config.schema import TrainConfig
    from selfplay.train import Learner

    cfg = TrainConfig(learning_rate=args.lr, micro_batch_size=args.batch, epochs=1, warmup_ratio=0.0,
                      lr_schedule="constant", max_grad_norm=1e9, precision=args.dtype,
                      length_grouping="megabatch")  # length-bucketed, as docs/benchmarks.md's figures ran
    # A fresh learner per run, shut down before TRL runs: a live process group would make TRL's
    # accelerate wrap its model in DistributedDataParallel (slower, and not TRL's fastest setting).
    # Chat prompts, JSON-encoded as the driver stores them: rendered with the chat template, like TRL's.
    rows = [{**p, "prompt": json.dumps([{"role": "user", "content": p["prompt"]}])} for p in pairs]
    learner = Learner(path, cfg, threads=args.threads)
    if learner.device.type != args.device:
        learner.shutdown()
        raise RuntimeError(f"--device {args.device}, but the learner chose {learner.device}")
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


def run_bare(path: Path, pairs: list[dict], args):
    """The practical limit: a bare PyTorch DPO loop. Same tokens as ours (``encode_pairs``), batches of
    similar lengths (sorted by length, then the batch order shuffled), reference log-probs precomputed
    (untimed, like the others), one forward over chosen and rejected together, sigmoid loss, AdamW;
    no DeepSpeed, no framework, no gradient clipping (the others clip at 1e9, i.e. never)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.config.schema import TrainConfig
    from selfplay.train.data import encode_pairs

    rows = [{**p, "prompt": json.dumps([{"role": "user", "content": p["prompt"]}])} for p in pairs]
    tok = AutoTokenizer.from_pretrained(path)
    data = encode_pairs(pa.Table.from_pylist(rows), tok, TrainConfig())
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0 = time.perf_counter()
    device = torch.device(args.device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    model.config.use_cache = False
    order = sorted(range(len(data)), key=lambda i: int(data.lengths()[i]))
    batches = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
    random.Random(0).shuffle(batches)

    def tensors(idx: list[int]):
        seqs, starts = [], []
        for side in ("chosen", "rejected"):
            for i in idx:
                seqs.append(data.prompts[i] + data.completions[side][i])
                starts.append(len(data.prompts[i]))
        width = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.bool)
        for j, q in enumerate(seqs):
            ids[j, :len(q)] = torch.tensor(q)
            mask[j, starts[j]:len(q)] = True
        return ids.to(device), mask.to(device)

    def logps(ids, mask):
        att = torch.zeros_like(mask)
        for j in range(ids.shape[0]):  # attend to the real tokens only
            att[j, : int(mask[j].nonzero().max()) + 1] = True
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            logits = model(input_ids=ids, attention_mask=att.long()).logits[:, :-1].float()
        tok_lp = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None]).squeeze(2)
        return (tok_lp * mask[:, 1:]).sum(-1)

    prepared = [tensors(b) for b in batches]
    with torch.no_grad():
        refs = [logps(ids, mask) for ids, mask in prepared]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, fused=True)  # the fastest CPU step
    model.train()
    t1 = time.perf_counter()
    losses = []
    for (ids, mask), ref in zip(prepared, refs):
        lp = logps(ids, mask)
        k = ids.shape[0] // 2
        margin = (lp[:k] - ref[:k]) - (lp[k:] - ref[k:])
        loss = -F.logsigmoid(args.beta * margin).mean()
        loss.backward()
        losses.append(loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    return {"train_s": t2 - t1, "total_s": t2 - t0, "loss_first": float(losses[0]), "loss_last": float(losses[-1]),
            "tokens": tokens(path, rows), "steps": len(losses)}


def matmul_flops(threads: int, n: int = 2048, repeats: int = 5, device: str = "cpu", dtype: str = "fp32") -> float:
    """Best FLOP/s of a ``torch.mm`` of two n x n matrices in ``dtype`` on ``device`` (on the CPU at
    ``threads`` threads; on CUDA each timing covers 10 products and waits for the device)."""
    import torch

    torch.set_num_threads(threads)
    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=kind) for _ in range(2))
    if device == "cpu":
        torch.mm(a, b)
        best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
        return 2 * n**3 / best

    def ten() -> None:
        for _ in range(10):
            torch.mm(a, b)
        torch.cuda.synchronize()

    ten()  # warm-up: kernel selection and clocks
    return 2 * n**3 * 10 / min(_timed(ten) for _ in range(repeats))


def peak_of(args: argparse.Namespace) -> float:
    """The MFU denominator of this run (see the module docstring)."""
    n = 8192 if args.device == "cuda" else 2048
    return matmul_flops(args.threads, n=n, device=args.device, dtype=args.dtype)


def peak_label(args: argparse.Namespace) -> str:
    n = 8192 if args.device == "cuda" else 2048
    where = "CUDA" if args.device == "cuda" else f"{args.threads} thread(s)"
    return f"torch.mm {args.dtype} {n}x{n} on {where}"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def mfu(result: dict, params: int, peak: float) -> float:
    """Model FLOPs utilisation of a training run: 6 x parameters x trained tokens per second, over ``peak``
    (attention's own FLOPs left out, which understates long rows slightly)."""
    return 6 * params * result["tokens"] / result["train_s"] / peak


ROWS = {  # name: (preset, completion characters or None, contenders)
    "small": ("small", None, ("ours", "TRL", "bare")),
    "medium": ("medium", 256, ("ours", "bare")),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--pairs", type=int, default=96, help="pairs of the small row")
    ap.add_argument("--medium-pairs", type=int, default=8, help="pairs of the medium row (256-token completions)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.1, help="DPO beta of the bare loop (ours and TRL default 0.1)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each contender, small row")
    ap.add_argument("--medium-repeats", type=int, default=1, help="alternating runs of each contender, medium row")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: ours and bare on one GPU")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="training precision, and the dtype of the MFU denominator's torch.mm")
    ap.add_argument("--json", default=None, help="also write the best runs and MFUs to this JSON file")
    args = ap.parse_args(argv)
    for name in ("pairs", "medium_pairs", "batch", "threads", "repeats", "medium_repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    require_device(ap, args.device)
    return args


def require_device(ap: argparse.ArgumentParser, device: str) -> None:
    """Stop with a usage error when ``--device cuda`` is asked and torch sees no CUDA device."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: torch sees no CUDA device")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    from selfplay.env import setup_env

    setup_env(args.threads)
    if args.device == "cpu":
        os.environ.setdefault("ACCELERATE_USE_CPU", "1")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the learner would otherwise pick a GPU if one is there
    peak = peak_of(args)
    print(f"{peak_label(args)}: {peak / 1e9:.1f} GFLOP/s (the MFU denominator; "
          "measured again at the end, the higher is used)")
    tmp = tempfile.mkdtemp(prefix="bench_learner_")
    try:
        compare(args, tmp, peak)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the built models and TRL's output dir


def compare(args: argparse.Namespace, tmp: str, peak: float) -> None:
    import torch

    from selfplay.models import build_policy, count_parameters

    best: dict[str, dict[str, float]] = {}
    best_mfu: dict[str, dict[str, float]] = {}
    runners = {"ours": lambda path, pairs: run_ours(path, pairs, args),
               "TRL": lambda path, pairs: run_trl(path, pairs, args, tmp),
               "bare": lambda path, pairs: run_bare(path, pairs, args)}
    for row in args.rows:
        preset, completion, contenders = ROWS[row]
        if args.device != "cpu":
            contenders = tuple(c for c in contenders if c != "TRL")
        n = args.pairs if row == "small" else args.medium_pairs
        repeats = args.repeats if row == "small" else args.medium_repeats
        path = build_policy(Path(tmp) / preset, preset=preset, tokenizer="char", seed=0)
        params = count_parameters(path)
        pairs = make_pairs(n, completion_chars=completion)
        print(f"\nrow {row}: model {preset} {params / 1e6:.1f}M params; {len(pairs)} pairs, completions "
              f"{completion or '1-60'} chars, batch {args.batch}, threads {torch.get_num_threads()}, {args.dtype} on "
              f"{args.device}, 1 epoch")
        results: dict[str, list[dict]] = {c: [] for c in contenders}
        for r in range(repeats):
            for c in contenders:
                res = runners[c](path, copy.deepcopy(pairs))
                results[c].append(res)
                rate = len(pairs) / res["train_s"]
                print(f"  run {r + 1} {c:<4}: {rate:7.2f} pairs/s train ({res['train_s']:.1f}s); "
                      f"end-to-end {res['total_s']:.1f}s; loss {res['loss_last']:.4f}; tokens {res['tokens']}; "
                      f"MFU {mfu(res, params, peak):6.1%}", flush=True)
        best[row] = {c: len(pairs) / min(x["train_s"] for x in rs) for c, rs in results.items()}
        best_mfu[row] = {c: max(mfu(x, params, peak) for x in rs) for c, rs in results.items()}
        line = ", ".join(f"{c} {v:.2f} pairs/s" for c, v in best[row].items())
        mfus = ", ".join(f"{c} {v:.1%}" for c, v in best_mfu[row].items())
        print(f"  best runs: {line}; MFU {mfus}")
    again = peak_of(args)
    if again > peak:  # a loaded machine gave the first measurement less: restate every MFU against the higher one
        print(f"torch.mm again: {again / 1e9:.1f} GFLOP/s; MFU above x {peak / again:.3f}")
        for row, m in best_mfu.items():
            print(f"  MFU {row} against it: " + ", ".join(f"{c} {v * peak / again:.1%}" for c, v in m.items()))
    else:
        print(f"torch.mm again: {again / 1e9:.1f} GFLOP/s (the first one stands)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": args.device, "dtype": args.dtype, "matmul_flops": max(peak, again),
            "pairs_per_s": best, "mfu": {r: {c: v * peak / max(peak, again) for c, v in m.items()}
                                        for r, m in best_mfu.items()}}, indent=1))
    if "small" in best and "TRL" in best["small"]:
        print(f"ratio ours/TRL (train pairs/s, small): {best['small']['ours'] / best['small']['TRL']:.2f}x")
    for row, b in best.items():
        print(f"ratio ours/bare PyTorch (train pairs/s, {row}): {b['ours'] / b['bare']:.2f}x (goal >= 0.9x)")


if __name__ == "__main__":
    main()
