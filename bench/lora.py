"""LoRA vs full fine-tuning (learner memory, step time) and merged vs adapter-only weight sync (vLLM).

    python -m bench.lora [--preset medium] [--pairs 64] [--batch 8] [--rank 8] [--threads 1] [--repeats 3]

Every measurement runs in a child process of its own, so peak memory is that run's alone and vLLM's
process-wide torch settings touch nothing else. The preset is built offline once (char tokenizer).

1. Learner, ``full`` and ``lora``: build the learner (ZeRO-0, world size 1, fp32, no Ray), compute
   reference log-probs, run one DPO round. Reported: peak resident memory of the process (``ru_maxrss``;
   on CUDA also ``torch.cuda.max_memory_allocated``), median optimizer-step time, trainable parameters,
   and ``grad_adam_mb``, the exact bytes of gradients and AdamW moments (one gradient and two moments
   per trainable parameter). Peak RSS includes the weights, activations and libraries, which both modes
   hold, and moves by about 100 MB from run to run; ``grad_adam_mb`` is where the saving is. The LoRA
   run then times both ways out of the learner: the merged weights as sync buckets (``export_weights``)
   and the adapter alone as a PEFT directory, and saves the policy (merged + ``adapter/``) for step 2.
2. vLLM, ``merged``: an engine on the base loads the merged buckets through the verified path
   (``load_buckets``: sha256 of every bucket, then the worker's ``reload_weights``). ``adapter``: an
   engine started with ``enable_lora`` loads the PEFT directory (``add_lora``). Each is the median of
   ``--repeats`` loads after one untimed one. Both engines then generate the same greedy batch (the
   adapter engine with the adapter applied), timed, and the adapter engine tries the probe-log-prob
   check that verifies every sync.

Printed last: the ratios LoRA / full and adapter / merged.
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
import time
from pathlib import Path

GEN_PROMPTS, GEN_TOKENS = 32, 32


def learner_child(args) -> dict:
    import torch

    from bench.learner import make_pairs
    from selfplay.config.schema import TrainConfig
    from selfplay.train import Learner

    cfg = TrainConfig(learning_rate=1e-4, micro_batch_size=args.batch, warmup_ratio=0.0, lr_schedule="constant",
                      lora={"r": args.rank if args.mode == "lora" else 0, "alpha": 2.0 * args.rank})
    lrn = Learner(args.model, cfg, threads=args.threads)
    pairs = lrn.compute_reference(make_pairs(args.pairs))
    times: list[float] = []
    summary = lrn.train_round(pairs, on_step=lambda rec: times.append(rec["seconds"]))
    out = {"mode": args.mode, "steps": summary["steps"], "trainable_params": summary["trainable_params"],
           "total_params": summary["total_params"], "step_s": statistics.median(times),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    # Exact, unlike peak RSS (whole process, allocator-dependent): AdamW moments held after the round,
    # plus one fp32 gradient per trainable parameter (allocated in every backward).
    moments = sum(t.numel() * t.element_size() for st in lrn.optimizer.state.values() for t in st.values()
                  if torch.is_tensor(t) and t.dim() > 0)
    out["grad_adam_mb"] = (moments + 4 * summary["trainable_params"]) / 2**20
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.mode == "lora":
        out.update(learner_exports(lrn, Path(args.policy), args.repeats))
    lrn.shutdown()
    return out


def learner_exports(lrn, policy: Path, repeats: int) -> dict:
    """Seconds to get the merged buckets vs the adapter directory out of the learner (medians)."""
    from selfplay.train.lora import adapter_state, write_adapter

    merged, adapter = [], []
    for i in range(repeats):
        start = time.perf_counter()
        blobs = lrn.export_weights(bucket_mb=64.0, version=i + 1)
        merged.append(time.perf_counter() - start)
        start = time.perf_counter()
        write_adapter(policy.parent / f"adapter_{i}", lrn.engine.module, adapter_state(lrn.engine), str(policy.parent))
        adapter.append(time.perf_counter() - start)
    lrn.save_hf(policy)
    return {"export_merged_s": statistics.median(merged), "export_adapter_s": statistics.median(adapter),
            "merged_bytes": sum(len(b) for b in blobs),
            "adapter_bytes": (policy / "adapter" / "adapter_model.safetensors").stat().st_size}


def serve_child(args) -> dict:
    """One vLLM engine on the base: load the trained weights ``repeats`` times (merged or adapter), generate."""
    from selfplay.env import setup_env

    setup_env(threads=args.threads)
    from safetensors.torch import load_file
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from selfplay.generate.vllm_engine import VLLMEngine
    from selfplay.sync.buckets import pack_buckets

    policy = Path(args.policy)
    adapter_dir = str(policy / "adapter")
    extra = {"enable_lora": True, "max_lora_rank": args.rank, "max_loras": 1} if args.mode == "adapter" else {}
    start = time.perf_counter()
    engine = VLLMEngine(args.model, dtype="float32", max_model_len=256, **extra)
    out: dict = {"mode": args.mode, "engine_start_s": time.perf_counter() - start}
    llm = engine._llm
    loads = []
    if args.mode == "merged":
        state = load_file(str(policy / "model.safetensors"))
        for i in range(args.repeats + 1):
            blobs = list(pack_buckets(state.items(), bucket_mb=64.0, version=i + 1))
            start = time.perf_counter()
            engine.load_buckets(blobs, i + 1)
            loads.append(time.perf_counter() - start)
        request = None
    else:
        for i in range(1, args.repeats + 2):
            if i > 1:
                llm.llm_engine.remove_lora(i - 1)
            start = time.perf_counter()
            if not llm.llm_engine.add_lora(LoRARequest(f"v{i}", i, adapter_dir)):
                raise RuntimeError(f"vLLM refused the adapter {adapter_dir}")
            loads.append(time.perf_counter() - start)
        request = LoRARequest(f"v{args.repeats + 1}", args.repeats + 1, adapter_dir)
    out["load_s"] = statistics.median(loads[1:])
    tok = engine.tokenizer
    prompts = [{"prompt_token_ids": tok(f"{i}+{2 * i}=", add_special_tokens=True)["input_ids"]}
               for i in range(GEN_PROMPTS)]
    params = SamplingParams(max_tokens=GEN_TOKENS, temperature=0, ignore_eos=True, detokenize=False)
    llm.generate(prompts[:2], params, use_tqdm=False, lora_request=request)  # warm
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False, lora_request=request)
    out["generate_s"] = time.perf_counter() - start
    out["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
    if request is not None:  # the check every sync passes: probe log-probs (vLLM prompt_logprobs)
        probe = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0, detokenize=False)
        try:
            llm.generate(prompts[:2], probe, use_tqdm=False, lora_request=request)
            out["probe_error"] = None
        except Exception as exc:  # noqa: BLE001 - reported, that is the measurement
            out["probe_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"
    return out


def run_child(mode: str, model: Path, policy: Path, args) -> dict:
    cmd = [sys.executable, "-m", "bench.lora", "--mode", mode, "--model", str(model), "--policy", str(policy),
           *(f"--{k}={getattr(args, k)}" for k in ("pairs", "batch", "rank", "threads", "repeats"))]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, check=False)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    if run.returncode != 0 or not lines:
        raise SystemExit(f"bench.lora: the {mode} run failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="medium")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mode", choices=["full", "lora", "merged", "adapter"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--policy", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode is not None:
        result = serve_child(args) if args.mode in ("merged", "adapter") else learner_child(args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    from selfplay.models import build_policy

    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        model = build_policy(Path(tmp) / args.preset, preset=args.preset, tokenizer="char", seed=0)
        policy = Path(tmp) / "trained" / "policy"
        r = {mode: run_child(mode, model, policy, args) for mode in ("full", "lora", "merged", "adapter")}
    for res in r.values():
        print(json.dumps({k: v for k, v in res.items() if k != "tokens"}))
    full, lora, merged, adapter = r["full"], r["lora"], r["merged"], r["adapter"]
    print(f"\npreset {args.preset}, {args.pairs} pairs, micro-batch {args.batch}, LoRA r={args.rank}, "
          f"{args.threads} thread(s), {full['steps']} steps")
    print(f"trainable parameters: {lora['trainable_params']:,} of {lora['total_params']:,} "
          f"({lora['trainable_params'] / lora['total_params']:.4f})")
    rows = [(key, full[key], lora[key]) for key in ("peak_rss_mb", "grad_adam_mb", "peak_cuda_mb", "step_s")
            if key in full]
    merged_sync = lora["export_merged_s"] + merged["load_s"]
    adapter_sync = lora["export_adapter_s"] + adapter["load_s"]
    same = sum(a == b for a, b in zip(merged["tokens"], adapter["tokens"]))
    print(f"{'':28}{'full / merged':>14}{'LoRA / adapter':>16}{'ratio':>8}")
    for name, a, b in [*rows, ("sync: learner export s", lora["export_merged_s"], lora["export_adapter_s"]),
                       ("sync: vLLM load s", merged["load_s"], adapter["load_s"]),
                       ("sync: total s", merged_sync, adapter_sync),
                       (f"vLLM generate {GEN_PROMPTS}x{GEN_TOKENS} s", merged["generate_s"], adapter["generate_s"])]:
        print(f"{name:28}{a:14.3f}{b:16.3f}{b / a:8.3f}")
    print(f"sync payload: merged {lora['merged_bytes'] / 2**20:.1f} MiB, "
          f"adapter {lora['adapter_bytes'] / 2**20:.2f} MiB; greedy outputs identical for {same}/{GEN_PROMPTS} prompts")
    print(f"probe log-probs (sync verification) with the adapter: {adapter['probe_error'] or 'ok'}")


if __name__ == "__main__":
    main()
