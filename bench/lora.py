"""LoRA vs full fine-tuning: peak learner memory and DPO step time, on the same model and pairs.

    python -m bench.lora [--preset medium] [--pairs 64] [--batch 8] [--rank 8] [--threads 1]

Each mode runs in its own child process (so peak memory is that mode's alone): build the learner on the
preset (built offline once, shared), compute reference log-probs, run one DPO round (ZeRO-0, world size
1, no Ray). Reported per mode: peak resident memory of the process (``ru_maxrss``; on CUDA also
``torch.cuda.max_memory_allocated``), median optimizer-step time, trainable parameters. Then the ratios
LoRA / full. Peak RSS includes the weights, which both modes hold; the saving is in gradients and AdamW
state (two moments per trainable parameter).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child(args) -> dict:
    import torch

    from bench.learner import make_pairs
    from selfplay.config.schema import TrainConfig
    from selfplay.train import Learner

    cfg = TrainConfig(learning_rate=1e-4, micro_batch_size=args.batch, warmup_ratio=0.0, lr_schedule="constant",
                      lora={"r": args.rank if args.mode == "lora" else 0})
    lrn = Learner(args.model, cfg, threads=args.threads)
    pairs = lrn.compute_reference(make_pairs(args.pairs))
    times: list[float] = []
    summary = lrn.train_round(pairs, on_step=lambda rec: times.append(rec["seconds"]))
    out = {"mode": args.mode, "steps": summary["steps"], "trainable_params": summary["trainable_params"],
           "total_params": summary["total_params"], "step_s": statistics.median(times),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    lrn.shutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="medium")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", choices=["full", "lora"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode is not None:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    from selfplay.models import build_policy

    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        model = build_policy(Path(tmp) / args.preset, preset=args.preset, tokenizer="char", seed=0)
        results = {}
        for mode in ("full", "lora"):
            cmd = [sys.executable, "-m", "bench.lora", "--mode", mode, "--model", str(model),
                   *(f"--{k}={getattr(args, k)}" for k in ("pairs", "batch", "rank", "threads"))]
            run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, check=False)
            lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
            if run.returncode != 0 or not lines:
                raise SystemExit(f"{mode} run failed:\n{run.stderr[-3000:]}")
            results[mode] = json.loads(lines[-1].removeprefix("RESULT "))
            print(json.dumps(results[mode]))
    full, lora = results["full"], results["lora"]
    print(f"preset {args.preset}, {args.pairs} pairs, micro-batch {args.batch}, LoRA r={args.rank}")
    print(f"trainable parameters: {lora['trainable_params']:,} of {lora['total_params']:,} "
          f"({lora['trainable_params'] / lora['total_params']:.4f})")
    for key in ("peak_rss_mb", "peak_cuda_mb", "step_s"):
        if key in full and key in lora:
            print(f"{key}: full {full[key]:.1f}  lora {lora[key]:.1f}  ratio lora/full {lora[key] / full[key]:.3f}")


if __name__ == "__main__":
    main()
