"""Weight-sync benchmark: seconds and GB/s to push a policy into 1 and 2 running vLLM generators.

    python -m bench.sync [--presets small medium large] [--methods object_store filesystem]

For each preset (about 14M, 52M and 101M parameters, fp32) a two-replica ``GeneratorPool`` is started
and an HF model (the learner side) exports its weights in ``--bucket-mb`` buckets. A sync is timed from
the learner's buckets to "every generator has verified and loaded them" (``SyncReport.transfer_s``;
the export and the probe verification are reported apart): the median of ``--repeats`` syncs after
``--warmup`` untimed ones (a fresh engine's first reload pays one-time costs that a run pays once).
The bound is an in-process copy of the same bytes (allocate + memcpy, once per generator): what
delivering them costs with no transport, no verification and no engine. The ratio (sync / bound) is
printed last; the goal is within 3x. Each row also shows what the last sync cost inside the slowest
generator: verifying every bucket's sha256 and the engine's own reload (on CPU, vLLM re-packs every
linear weight for oneDNN); the rest is the transport.
Built models are cached under ``.cache/bench/``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

CACHE = Path(os.environ.get("SELFPLAY_BENCH_CACHE", ".cache/bench"))


def copy_bound(blobs: list[bytes], copies: int, repeats: int = 3) -> float:
    """Median seconds to copy every bucket into freshly allocated memory ``copies`` times."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(copies):
            out = [bytearray(b) for b in blobs]
        times.append(time.perf_counter() - start)
        del out
    return statistics.median(times)


def bench_preset(
    preset: str, methods: list[str], bucket_mb: float, repeats: int, warmup: int, rows: list[dict]
) -> None:
    import torch

    from actors.generator import GeneratorPool
    from selfplay.config.schema import GenerationConfig, ResourcesConfig
    from selfplay.generate import make_engine
    from selfplay.models import build_policy, count_parameters
    from selfplay.sync.filesystem import FilesystemSync
    from selfplay.sync.object_store import ObjectStoreSync

    path = build_policy(CACHE / preset, preset=preset, tokenizer="char", seed=0)
    params = count_parameters(path)
    learner = make_engine("hf", path, dtype="float32")
    cfg = GenerationConfig(replicas=2, max_model_len=128)
    pool = GeneratorPool(path, cfg, ResourcesConfig(), dtype="float32", start_timeout_s=900)
    try:
        with torch.no_grad():
            for p in learner.model.parameters():
                p.mul_(1.01)  # new weights
        start = time.perf_counter()
        blobs = learner.export_weights(bucket_mb, 1)
        export_s = time.perf_counter() - start
        nbytes = sum(len(b) for b in blobs)
        version = 0
        for method in methods:
            for replicas in (1, 2):
                gens = list(zip(pool.names, pool.actors))[:replicas]
                named = _Named(gens)
                if method == "object_store":
                    sync = ObjectStoreSync(bucket_mb, probe=None, timeout_s=900)
                else:
                    sync = FilesystemSync(CACHE / "weights" / preset, bucket_mb, probe=None, timeout_s=900, keep=1)
                for _ in range(warmup):  # the first reload into a fresh engine pays one-time costs
                    version += 1
                    sync.push(learner, named, version)
                times = []
                for _ in range(repeats):
                    version += 1
                    times.append(sync.push(learner, named, version).transfer_s)
                sync_s = statistics.median(times)
                verify_s, load_s = last_load(named)
                bound_s = copy_bound(blobs, replicas)
                rows.append(dict(preset=preset, params=params, mb=nbytes / 1e6, method=method, gens=replicas,
                                 export_s=export_s, sync_s=sync_s, gbps=nbytes * replicas / sync_s / 1e9,
                                 bound_s=bound_s, ratio=sync_s / bound_s, verify_s=verify_s, load_s=load_s))
                r = rows[-1]
                print(f"{preset:>6} {params / 1e6:6.1f}M {r['mb']:7.1f} MB  {method:<12} gens={replicas}  "
                      f"export {export_s:6.3f} s  sync {sync_s:6.3f} s  {r['gbps']:5.2f} GB/s  "
                      f"bound {bound_s:6.3f} s  ratio {r['ratio']:5.2f}x  "
                      f"(last sync in a generator: verify {verify_s:.3f} s, engine load {load_s:.3f} s)", flush=True)
    finally:
        pool.shutdown()


def last_load(named: _Named) -> tuple[float, float]:
    """The slowest generator's seconds to verify and to load the last sync (its ``info()["last_load"]``)."""
    import ray

    stats = [info.get("last_load") or {} for info in ray.get([a.info.remote() for a in named.actors])]
    return max(s.get("verify_s", 0.0) for s in stats), max(s.get("load_s", 0.0) for s in stats)


class _Named:
    """The first ``k`` generators of a pool, in the shape a WeightSync takes."""

    def __init__(self, named):
        self.names = [n for n, _ in named]
        self.actors = [a for _, a in named]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["small", "medium", "large"])
    parser.add_argument("--methods", nargs="+", default=["object_store", "filesystem"])
    parser.add_argument("--bucket-mb", type=float, default=64.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed syncs before each timed series")
    args = parser.parse_args()

    from selfplay.env import setup_env

    setup_env(threads=1)
    import ray

    # its own Ray, never a cluster someone else started on this machine (ray.init would join that one)
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    rows: list[dict] = []
    try:
        for preset in args.presets:
            bench_preset(preset, args.methods, args.bucket_mb, args.repeats, args.warmup, rows)
    finally:
        ray.shutdown()
    print("\nsync time / in-process copy of the same bytes (goal: <= 3x):")
    for r in rows:
        print(f"  {r['preset']:>6} {r['method']:<12} gens={r['gens']}: {r['ratio']:.2f}x "
              f"({r['sync_s']:.3f} s vs {r['bound_s']:.3f} s, {r['gbps']:.2f} GB/s; "
              f"in a generator: verify {r['verify_s']:.3f} s + engine load {r['load_s']:.3f} s)")


if __name__ == "__main__":
    main()
