"""A weight sync into a CUDA process: a DeepSpeed learner on the GPU exports its weights as the project's
buckets (``selfplay/sync/buckets.py``), a second process that holds the same model on the GPU verifies
and loads them, and both sides' logits on a probe batch are compared.

    python -m bench.sync_cuda [--preset large] [--syncs 3] [--bucket-mb 64] [--device cuda] [--json PATH]

What it checks, each sync (a failed check exits non-zero):

* the receiver's ``decode_sync`` verifies every bucket's checksum and version, and its sync digest equals
  the sender's ``sync_digest`` of the same buckets;
* a SHA-256 over the receiver model's state dict after the load equals one over the learner's exported
  tensors (the bytes reached the model, not only the buffers);
* the receiver's logits on the probe batch equal those of a mirror model in the sending process, loaded
  the same way from the tensors that were sent (the largest absolute difference must be at most
  ``--atol``, default 0: the same weights, dtype and kernels give the same logits);
* and they are close to the learner module's own (printed; at most ``--learner-atol``): DeepSpeed casts
  the whole module, non-persistent buffers such as rotary frequencies included, to the training dtype,
  where a model loaded in that dtype keeps those in fp32, so the two may differ in the last bits.

The learner trains one short round before the first sync, and another between syncs, so each sync carries
weights that differ from the checkpoint the receiver started from. Timed per sync: export (the learner's
``export_weights``, device to host), transfer (the buckets through a pipe into the other process), and
the receiver's verify and load (``decode_sync``, ``load_state_dict`` onto the device, synchronised); the
total runs from the export's start to the load's end (``time.perf_counter`` is one clock for both processes
on Linux), the checks after it left out.

``--device cpu`` runs the same protocol on the CPU (fp32 unless ``--precision bf16``), which is how it is
checked where no GPU is.
Run on a GPU by ``scripts/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.learner import make_pairs, require_device
from selfplay.env import setup_env
from selfplay.models import build_policy, count_parameters, load_policy

# torch and the selfplay modules that load it are imported inside the functions that use them: main() sets
# the thread count (setup_env) first, and torch reads it when it loads; the receiver is a spawned process.
PROBE = [[1, 5, 10, 11, 12, 6, 14, 20, 30, 41], [3, 4, 5, 6, 7, 8], list(range(3, 90))]


def state_sha(named: list[tuple[str, Any]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of tensors in name order, read on the host."""
    import torch

    digest = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        host = t.detach().to("cpu").contiguous()
        digest.update(f"{name}|{host.dtype}|{tuple(host.shape)}|".encode())
        digest.update(host.view(torch.uint8).numpy().tobytes() if host.numel() else b"")
    return digest.hexdigest()


def probe_logits(model: Any, device: str) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([s], device=device)).logits[0].float().cpu() for s in PROBE]


def max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def receiver(conn: Any, model_dir: str, device: str, dtype: str) -> None:
    """The other process: load the model on ``device``, then per sync receive the buckets, verify, load and
    answer with the digests, the logits and its timings."""
    import torch

    from selfplay.generate.weights import decode_sync

    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    model, _ = load_policy(model_dir, dtype=getattr(torch, dtype))
    model = model.to(device).eval()
    names = list(model.state_dict().keys())
    conn.send({"ready": str(next(model.parameters()).device)})
    while True:
        msg = conn.recv()
        if msg is None:
            return
        version, count = msg
        blobs = [conn.recv_bytes() for _ in range(count)]
        received = time.perf_counter()
        named, digest = decode_sync(blobs, version, names)
        verified = time.perf_counter()
        model.load_state_dict(dict(named), strict=True)
        if device == "cuda":
            torch.cuda.synchronize()
        loaded = time.perf_counter()
        conn.send({"digest": digest, "state_sha": state_sha(list(model.state_dict().items())),
                   "logits": probe_logits(model, device), "received": received, "loaded": loaded,
                   "verify_s": verified - received, "load_s": loaded - verified})


def train_a_little(learner: Any, seed: int) -> None:
    import pyarrow as pa

    rows = [{**p, "prompt": json.dumps([{"role": "user", "content": p["prompt"]}])} for p in make_pairs(16, seed)]
    learner.train_round(learner.compute_reference(pa.Table.from_pylist(rows)))


def one_sync(learner: Any, conn: Any, path: Path, dtype: str, version: int, args: argparse.Namespace) -> dict:
    """Export, send, and check what the receiver answered (see the module docstring); one row of the result."""
    import torch

    from selfplay.sync.buckets import bucket_nbytes, sync_digest, unpack_bucket

    t0 = time.perf_counter()
    blobs = [bytes(b) for b in learner.export_weights(bucket_mb=args.bucket_mb, version=version)]
    t1 = time.perf_counter()
    conn.send((version, len(blobs)))
    for b in blobs:
        conn.send_bytes(b)
    got = conn.recv()
    t2 = time.perf_counter()
    sent = [kv for b in blobs for kv in unpack_bucket(b, expect_version=version)[0].items()]
    mirror, _ = load_policy(path, dtype=getattr(torch, dtype))
    mirror = mirror.to(args.device).eval()
    mirror.load_state_dict(dict(sent), strict=True)
    worst = max_diff(got["logits"], probe_logits(mirror, args.device))
    del mirror
    off = max_diff(got["logits"], probe_logits(learner.engine.module.eval(), args.device))
    learner.engine.module.train()
    nbytes = sum(bucket_nbytes(b) for b in blobs)
    row = {"version": version, "buckets": len(blobs), "bytes": nbytes, "export_s": t1 - t0,
           "transfer_s": got["received"] - t1, "verify_s": got["verify_s"], "load_s": got["load_s"],
           "total_s": got["loaded"] - t0, "checked_s": t2 - t0, "logits_max_abs_diff": worst,
           "learner_logits_max_abs_diff": off,
           "digest_ok": got["digest"] == sync_digest(blobs), "state_ok": got["state_sha"] == state_sha(sent)}
    row["ok"] = row["digest_ok"] and row["state_ok"] and worst <= args.atol and off <= args.learner_atol
    print(f"  sync {version}: {len(blobs)} buckets, {nbytes / 2**20:.1f} MiB; export {row['export_s']:.3f}s, "
          f"transfer {row['transfer_s']:.3f}s, verify {row['verify_s']:.3f}s, load {row['load_s']:.3f}s, "
          f"total {row['total_s']:.3f}s ({nbytes / row['total_s'] / 1e9:.2f} GB/s); digest "
          f"{'ok' if row['digest_ok'] else 'MISMATCH'}, state {'ok' if row['state_ok'] else 'MISMATCH'}, "
          f"logits max |diff| {worst:.3g} (against the learner module {off:.3g})", flush=True)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from selfplay.config.schema import TrainConfig
    from selfplay.train import Learner

    torch.backends.cuda.matmul.allow_tf32 = False
    tmp = tempfile.mkdtemp(prefix="bench_sync_cuda_")
    path = build_policy(Path(tmp) / args.preset, preset=args.preset, tokenizer="char", seed=0)
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    cfg = TrainConfig(learning_rate=1e-4, micro_batch_size=8, warmup_ratio=0.0, lr_schedule="constant",
                      epochs=1, precision=precision)
    learner = Learner(path, cfg, threads=1)
    if learner.device.type != args.device:
        learner.shutdown()
        raise SystemExit(f"--device {args.device}, but the learner chose {learner.device}")
    dtype = "bfloat16" if precision == "bf16" else "float32"
    ctx = mp.get_context("spawn")  # a fresh process that initialises CUDA itself, as a generator would
    here, there = ctx.Pipe()
    proc = ctx.Process(target=receiver, args=(there, str(path), args.device, dtype), daemon=True)
    proc.start()
    syncs = []
    try:
        ready = here.recv()["ready"]
        print(f"model {args.preset} {count_parameters(path) / 1e6:.1f}M params, {precision}; learner on "
              f"{learner.device}, receiver process {proc.pid} on {ready}", flush=True)
        for version in range(1, args.syncs + 1):
            train_a_little(learner, seed=version)  # weights the receiver has not seen
            syncs.append(one_sync(learner, here, path, dtype, version, args))
        here.send(None)
        proc.join(timeout=60)
    finally:
        learner.shutdown()
        if proc.is_alive():
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    failures = [r["version"] for r in syncs if not r["ok"]]
    total = statistics.median(r["total_s"] for r in syncs)
    result = {"device": args.device, "preset": args.preset, "precision": precision, "syncs": syncs,
              "median_total_s": total, "failed_syncs": failures, "ok": not failures}
    print(f"sync into a {args.device} process: median {total:.3f}s per sync of "
          f"{syncs[0]['bytes'] / 2**20:.1f} MiB; {'all checks passed' if not failures else f'FAILED {failures}'}")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="large", help="model preset (selfplay/models/presets.py)")
    ap.add_argument("--syncs", type=int, default=3)
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--atol", type=float, default=0.0,
                    help="largest allowed |logit difference| (the same weights, dtype and kernels give 0)")
    ap.add_argument("--learner-atol", type=float, default=0.05,
                    help="largest allowed |logit difference| against the learner's own module")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                    help="learner and receiver dtype (default: bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--json", default=None, help="also write the per-sync rows to this JSON file")
    args = ap.parse_args(argv)
    if args.syncs < 1:
        ap.error(f"--syncs must be >= 1, got {args.syncs}")
    require_device(ap, args.device)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_env(1)
    if args.device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not result["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
