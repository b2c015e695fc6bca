"""Full weight-update benchmark: what a user waits for, from a DeepSpeed learner to generators serving verified weights.

    python -m bench.sync [--presets medium large] [--zero 0 3] [--gens 1 2] [--repeats 2]

A user's weight update starts when the optimizer step ends and ends when every generator serves the new
weights and has passed the sync's verification. That is what is timed here, through the library's own
path (``ObjectStoreSync.push`` with the default probe), from a real DeepSpeed learner rank in a Ray actor
(``LearnerGroup``, ZeRO-0 and ZeRO-3, world size ``--learners``) into real vLLM generators
(``GeneratorPool``, fp32). Each update is printed in its parts:

* ``export``: gather the full weights out of DeepSpeed (one ``GatheredParameters`` per bucket under
  ZeRO-3), checksum each bucket with blake3 and return the buckets into the object store, plus the small
  summary task next to the data (``SyncReport.export_s``). Below ZeRO-3 the buckets are split ones whose
  parts view the parameters, so Ray's copy into the store is the only copy; under ZeRO-3 each bucket is
  packed (joined) while its parameters are gathered, then stored;
* ``transfer``: every generator pulls the buckets, checks each checksum (``checksum``, from the slowest
  generator's ``info()["last_load"]``) and reloads its engine (``load``; on CPU vLLM re-packs every
  linear weight for oneDNN); the rest of ``transfer`` (``store``) is the object store itself. Each part
  is a median on its own, so ``store`` can read slightly below zero when it is near nothing;
* ``probe``: versions and checksums checked, then learner and generators score the probe batch.

The bound is an in-process copy of the same bytes, once per generator (allocate + memcpy): delivering
them with no transport, no hashing and no engine. The ratio full update / bound is the headline; the
goal is 3x. Medians of ``--repeats`` updates after ``--warmup`` untimed ones (default 3): the first
reload into a fresh engine pays one-time costs a run pays once, and so do the first objects a fresh
object store holds, whose memory the system maps on first touch (docs/benchmarks.md, "Measurements
behind choices in the code", has what the first updates cost).

Then ``ideas`` measures, in this process on the same bytes, the parts the library's choices rest on:
sha256 vs blake3 (one thread and all threads; buckets carry blake3), the pack copy, the per-parameter
gather copy (skipped below ZeRO-3), a ``ray.put``/``ray.get`` of ``bytes`` against numpy views (the
learner actor returns views), and checksum + ``ray.put`` of split buckets (``put_split``, what a ZeRO-0
export does) against pack + ``ray.put`` of the joined ones. From those it estimates what each of these
changes saves per update (the rows above already include them; estimates, labelled so), and prints
each row's ratio without the probe (from the measured parts).

LoRA rows (``--lora-rank``, default 8; 0 skips them; :mod:`bench.sync_lora`): per preset, an adapter-only
sync against the merged one, bytes moved and seconds, and the same two projected to a 7B model in bytes.

The last line reads ``full update worst ratio (medium+large): N.NNx`` over the object-store rows of the
``medium`` and ``large`` presets. Built models are cached under ``.cache/bench/``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.sync_lora import bench_lora, print_lora_summary
from selfplay.env import embedded_ray_environment, setup_env
from selfplay.models import build_policy, count_parameters

# Ray, torch, transformers and the selfplay modules that load torch are imported inside the functions that
# use them: main() sets the thread count (setup_env) first, and torch reads it when it loads.

CACHE = Path(os.environ.get("SELFPLAY_BENCH_CACHE", ".cache/bench"))
HEADLINE = ("medium", "large")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(HEADLINE), choices=["small", "medium", "large"])
    parser.add_argument("--zero", nargs="+", type=int, default=[0, 3], choices=[0, 1, 2, 3],
                        help="DeepSpeed ZeRO stages of the learner")
    parser.add_argument("--gens", nargs="+", type=int, default=[1, 2], help="generator counts (at most 2 on CPU)")
    parser.add_argument("--learners", type=int, default=1, help="DeepSpeed world size")
    parser.add_argument("--bucket-mb", type=float, default=64.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates before each timed series")
    parser.add_argument("--no-ideas", action="store_true", help="skip the in-process measurement of speed-ups")
    parser.add_argument("--lora-rank", type=int, default=8,
                        help="LoRA rank of the adapter-only vs merged rows (0: no LoRA rows)")
    args = parser.parse_args(argv)
    if any(g < 1 for g in args.gens) or args.repeats < 1 or args.warmup < 0 or args.learners < 1 or args.lora_rank < 0:
        parser.error("--gens, --repeats and --learners must be >= 1, --warmup and --lora-rank >= 0")
    return args


def copy_bound(nbytes: int, bucket_bytes: int, copies: int, repeats: int = 3) -> float:
    """Median seconds to copy ``nbytes`` (in buckets of ``bucket_bytes``) into fresh memory ``copies`` times."""
    sizes = [min(bucket_bytes, nbytes - i) for i in range(0, nbytes, bucket_bytes)]
    blobs = [os.urandom(1) * s for s in sizes]  # real pages, not a lazily mapped zero region
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(copies):
            out = [bytearray(b) for b in blobs]
        times.append(time.perf_counter() - start)
        del out
    return statistics.median(times)


def worst_ratio(rows: list[dict[str, Any]]) -> float | None:
    """The largest full-update ratio among the headline presets' object-store rows (``None`` if none ran)."""
    ratios = [r["ratio"] for r in rows if r["preset"] in HEADLINE and r["method"] == "object_store"]
    return max(ratios) if ratios else None


def last_load(pool: Any) -> tuple[float, float]:
    """The slowest generator's seconds to checksum and to load the last sync (its ``info()["last_load"]``)."""
    stats = [info.get("last_load") or {} for info in pool.info()]
    return max(s.get("verify_s", 0.0) for s in stats), max(s.get("load_s", 0.0) for s in stats)


def bench_preset(preset: str, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    from actors.generator import GeneratorPool
    from actors.learner import LearnerGroup
    from selfplay.config.schema import GenerationConfig, ResourcesConfig, TrainConfig
    from selfplay.sync.object_store import ObjectStoreSync
    from selfplay.sync.verify import DEFAULT_PROBE

    path = build_policy(CACHE / preset, preset=preset, tokenizer="char", seed=0)
    params = count_parameters(path)
    resources = ResourcesConfig(learners=args.learners, learner_cpus=1, generator_cpus=1, threads_per_actor=1)
    version = 0
    for k in sorted(args.gens):  # a pool of k generators: every load goes through the pool that owns them
        pool = GeneratorPool(path, GenerationConfig(replicas=k, max_model_len=128), resources, dtype="float32",
                             start_timeout_s=900)
        try:
            for zero in args.zero:
                cfg = TrainConfig(zero_stage=zero, micro_batch_size=2)
                group = LearnerGroup(path, cfg, num_learners=args.learners, resources=resources,
                                     setup_timeout_s=900)
                try:
                    sync = ObjectStoreSync(args.bucket_mb, probe=DEFAULT_PROBE, timeout_s=900)
                    for _ in range(args.warmup):
                        version += 1
                        sync.push(group, pool, version)
                    reports, parts = [], []
                    for _ in range(args.repeats):
                        version += 1
                        reports.append(sync.push(group, pool, version))
                        parts.append(last_load(pool))
                    row = summarize_reports(preset, params, zero, k, reports, parts)
                    row["bound_s"] = copy_bound(row["bytes"], int(args.bucket_mb * 1024 * 1024), k)
                    row["ratio"] = row["full_s"] / row["bound_s"]
                    rows.append(row)
                    print_row(row)
                finally:
                    group.shutdown()
        finally:
            pool.shutdown()


def summarize_reports(preset: str, params: int, zero: int, gens: int, reports: list[Any],
                      parts: list[tuple[float, float]]) -> dict[str, Any]:
    """One row: medians over the timed updates of each part and of the whole."""
    med = statistics.median
    return dict(preset=preset, params=params, method="object_store", zero=zero, gens=gens,
                bytes=reports[0].bytes, buckets=reports[0].buckets,
                export_s=med(r.export_s for r in reports), transfer_s=med(r.transfer_s for r in reports),
                checksum_s=med(p[0] for p in parts), load_s=med(p[1] for p in parts),
                probe_s=med(r.verify_s or 0.0 for r in reports), full_s=med(r.seconds for r in reports))


def print_row(r: dict[str, Any]) -> None:
    store = r["transfer_s"] - r["checksum_s"] - r["load_s"]
    print(f"{r['preset']:>6} {r['params'] / 1e6:5.1f}M {r['bytes'] / 1e6:6.1f} MB ZeRO-{r['zero']} gens={r['gens']} | "
          f"export {r['export_s']:6.3f} | transfer {r['transfer_s']:6.3f} (store {store:6.3f} checksum "
          f"{r['checksum_s']:6.3f} load {r['load_s']:6.3f}) | probe {r['probe_s']:6.3f} | full {r['full_s']:6.3f} s "
          f"| copy {r['bound_s']:6.3f} s | ratio {r['ratio']:6.2f}x", flush=True)


# ------------------------------------------------------------------------------------------ ideas
def _best(fn: Any, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_ideas(preset: str, bucket_mb: float) -> dict[str, float]:
    """Seconds of each candidate part on this preset's weights, in this process (one thread unless said)."""
    import numpy as np
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from selfplay.sync.buckets import pack_buckets
    from selfplay.sync.object_store import as_arrays

    model = AutoModelForCausalLM.from_pretrained(CACHE / preset, dtype=torch.float32)
    tensors = [(n, p.detach().contiguous()) for n, p in model.named_parameters()]
    raws = [t.reshape(-1).view(torch.uint8).numpy() for _, t in tensors]
    out: dict[str, float] = {}
    out["gather_copy_s"] = _best(lambda: [t.clone() for _, t in tensors])
    out["pack_s"] = _best(lambda: list(pack_buckets(tensors, bucket_mb, 0)))

    def sha() -> None:
        h = hashlib.sha256()
        for r in raws:
            h.update(r)

    out["sha256_s"] = _best(sha)
    try:
        import blake3

        def b3(threads: int) -> None:
            h = blake3.blake3(max_threads=threads)
            for r in raws:
                h.update(r)

        out["blake3_1t_s"] = _best(lambda: b3(1))
        out["blake3_all_s"] = _best(lambda: b3(blake3.blake3.AUTO))
    except ImportError:
        pass
    out["join_copy_s"] = max(out["pack_s"] - out.get("blake3_1t_s", 0.0), 0.0)
    blobs = list(pack_buckets(tensors, bucket_mb, 0))
    out["put_bytes_s"] = _best(lambda: ray.put(blobs))
    out["put_arrays_s"] = _best(lambda: ray.put(as_arrays(blobs)))
    ref_b, ref_a = ray.put(blobs), ray.put(as_arrays(blobs))
    out["get_bytes_s"] = _best(lambda: ray.get(ref_b))
    out["get_arrays_s"] = _best(lambda: [np.asarray(a) for a in ray.get(ref_a)])
    out["put_split_s"] = _best(lambda: ray.put(as_arrays(list(pack_buckets(tensors, bucket_mb, 0, split=True)))))
    return out


def savings(ideas: dict[str, float], zero: int) -> dict[str, float]:
    """Seconds each change takes off the critical path of one update (estimates from the parts; all of
    them are in the library now, so the rows above already include them)."""
    out = {
        # the learner actor returns numpy views instead of ``bytes``: one copy into the store skipped
        "array_return": max(ideas["put_bytes_s"] - ideas["put_arrays_s"], 0.0),
        # ... and each generator maps the buckets instead of copying them out (generators pull in parallel)
        "array_read": max(ideas["get_bytes_s"] - ideas["get_arrays_s"], 0.0),
        # blake3 (one thread) instead of sha256, once on the learner and once per generator (in parallel)
        "blake3": 2 * max(ideas["sha256_s"] - ideas.get("blake3_1t_s", ideas["sha256_s"]), 0.0),
    }
    if zero == 0:  # parameters are whole and on the CPU: pack from them without the gather's copy
        out["no_gather_copy"] = ideas["gather_copy_s"]
        # ... and not even pack: split buckets go from the parameters into the store in one copy
        out["split_return"] = max(ideas["pack_s"] + ideas["put_arrays_s"] - ideas["put_split_s"], 0.0)
    return out


def print_ideas(preset: str, ideas: dict[str, float], rows: list[dict[str, Any]]) -> None:
    print(f"\nideas on {preset} (in this process, one thread unless said; best of 3):")
    for key, value in ideas.items():
        print(f"  {key:<14} {value:7.3f} s")
    for zero in sorted({r["zero"] for r in rows if r["preset"] == preset}):
        parts = ", ".join(f"{k} -{v:.3f}" for k, v in savings(ideas, zero).items())
        print(f"  saved per update by the changes in the library, ZeRO-{zero} (estimated): {parts}")
    for r in (r for r in rows if r["preset"] == preset):
        print(f"  ZeRO-{r['zero']} gens={r['gens']}: without the probe "
              f"{(r['full_s'] - r['probe_s']) / r['bound_s']:.2f}x (measured parts)")


@contextlib.contextmanager
def embedded_ray(num_cpus: int) -> Iterator[None]:
    """This benchmark's own Ray (never a cluster someone else started here), loopback-only with a
    per-process token (so no token file is written into the user's home), shut down on the way out."""
    import ray

    with embedded_ray_environment():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_env(threads=1)
    rows: list[dict[str, Any]] = []
    with embedded_ray(max(args.gens) + args.learners + 1):
        for preset in args.presets:
            bench_preset(preset, args, rows)
            if args.lora_rank:
                bench_lora(preset, build_policy(CACHE / preset, preset=preset, tokenizer="char", seed=0), args, rows)
        if not args.no_ideas:
            for preset in args.presets:
                print_ideas(preset, measure_ideas(preset, args.bucket_mb), rows)
    if args.lora_rank:
        from selfplay.config.schema import LORA_DEFAULT_TARGETS

        print_lora_summary(rows, args.lora_rank, list(LORA_DEFAULT_TARGETS))
    print("\nfull update / in-process copy of the same bytes (goal: <= 3x):")
    for r in (r for r in rows if r["method"] == "object_store"):
        print(f"  {r['preset']:>6} ZeRO-{r['zero']} gens={r['gens']}: {r['ratio']:.2f}x "
              f"({r['full_s']:.3f} s vs {r['bound_s']:.3f} s)")
    worst = worst_ratio(rows)
    if worst is None:
        print("full update worst ratio (medium+large): n/a (neither preset ran)")
    else:
        print(f"full update worst ratio (medium+large): {worst:.2f}x")


if __name__ == "__main__":
    main()
