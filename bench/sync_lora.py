"""``bench.sync``'s LoRA rows: an adapter-only sync against the merged one, bytes moved and seconds.

A LoRA learner (``LearnerGroup``, ZeRO-0, rank ``--lora-rank`` on the default target modules) and one
vLLM generator started for adapters (``GeneratorPool`` with an ``AdapterSpec``, fp32) on the preset's
base. Both rows go through the library's own verified path (``ObjectStoreSync.push`` with the default
probe) into the same engine, alternating: ``merged`` pushes the merged weights (what ``sync.lora:
merged`` ships every sync; the engine replaces its base and drops the adapter), ``adapter`` pushes the
adapter tensors alone (``sync.lora: adapter`` once the generators hold the learner's base). Seconds are
the whole update (export, transfer, probe), medians over ``--repeats`` after ``--warmup`` untimed ones.
The adapters are freshly initialised: their values do not change what a sync moves or costs.

The 7B projection is arithmetic on a Llama-2-7B-shaped model (hidden 4096, 32 layers, MLP 11008, 32 heads
without grouped KV, vocabulary 32000): the merged weights in bf16 against the adapter tensors as the
learner exports them (fp32), at the same rank and targets.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

LLAMA2_7B = dict(hidden=4096, layers=32, mlp=11008, heads=32, kv_heads=32, vocab=32000)


def projection_7b(rank: int, targets: list[str], shape: dict[str, int] = LLAMA2_7B) -> tuple[int, int]:
    """``(merged bytes in bf16, adapter bytes in fp32)`` of one sync of a 7B Llama at LoRA ``rank``."""
    h, m, v = shape["hidden"], shape["mlp"], shape["vocab"]
    kv = h * shape["kv_heads"] // shape["heads"]
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, m), "up_proj": (h, m), "down_proj": (m, h)}  # (in, out)
    per_layer = sum(i * o for i, o in dims.values()) + 2 * h  # the projections and two norms
    full = shape["layers"] * per_layer + 2 * v * h + h  # embeddings, untied head, final norm
    adapter = shape["layers"] * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)
    return 2 * full, 4 * adapter


def bench_lora(preset: str, model: Path, args: Any, rows: list[dict[str, Any]]) -> None:
    """The two LoRA rows of ``preset`` (appended to ``rows`` and printed)."""
    from actors.generator import GeneratorPool
    from actors.learner import LearnerGroup
    from selfplay.config.schema import GenerationConfig, ResourcesConfig, TrainConfig
    from selfplay.generate.adapter import AdapterSpec
    from selfplay.sync.object_store import ObjectStoreSync
    from selfplay.sync.verify import DEFAULT_PROBE

    cfg = TrainConfig(zero_stage=0, micro_batch_size=2, lora={"r": args.lora_rank, "alpha": 2.0 * args.lora_rank})
    resources = ResourcesConfig(learners=1, learner_cpus=1, generator_cpus=1, threads_per_actor=1)
    spec = AdapterSpec.of(cfg.lora)
    pool = GeneratorPool(model, GenerationConfig(replicas=1, max_model_len=128), resources, dtype="float32",
                         start_timeout_s=900, engine_kwargs={"lora": spec})
    group = LearnerGroup(model, cfg, num_learners=1, resources=resources, setup_timeout_s=900)
    sync = ObjectStoreSync(args.bucket_mb, probe=DEFAULT_PROBE, timeout_s=900)
    kinds = {"merged": ("policy",), "adapter": ("adapter",)}
    reports: dict[str, list[Any]] = {k: [] for k in kinds}
    version = 0
    try:
        for i in range(args.warmup + args.repeats):
            for kind, parts in kinds.items():
                version += 1
                report = sync.push(group, pool, version, parts)
                if i >= args.warmup:
                    reports[kind].append(report)
    finally:
        group.shutdown()
        pool.shutdown()
    for kind, done in reports.items():
        row = dict(preset=preset, method="lora_" + kind, rank=args.lora_rank, bytes=done[0].bytes,
                   export_s=statistics.median(r.export_s for r in done),
                   transfer_s=statistics.median(r.transfer_s for r in done),
                   probe_s=statistics.median(r.verify_s or 0.0 for r in done),
                   full_s=statistics.median(r.seconds for r in done))
        rows.append(row)
        print(f"{preset:>6} LoRA r={args.lora_rank} {kind:>7}: {row['bytes'] / 1e6:8.3f} MB | export "
              f"{row['export_s']:6.3f} | transfer {row['transfer_s']:6.3f} | probe {row['probe_s']:6.3f} | "
              f"full {row['full_s']:6.3f} s", flush=True)


def print_lora_summary(rows: list[dict[str, Any]], rank: int, targets: list[str]) -> None:
    """Adapter-only against merged per preset, then the 7B projection in bytes."""
    by = {(r["preset"], r["method"]): r for r in rows if r["method"].startswith("lora_")}
    print(f"\nLoRA r={rank} sync, adapter-only / merged (bytes moved, seconds of the whole update):")
    for preset in dict.fromkeys(p for p, _ in by):
        a, m = by.get((preset, "lora_adapter")), by.get((preset, "lora_merged"))
        if a and m:
            print(f"  {preset:>6}: {a['bytes'] / 1e6:.3f} MB vs {m['bytes'] / 1e6:.1f} MB "
                  f"({a['bytes'] / m['bytes']:.4f}), {a['full_s']:.3f} s vs {m['full_s']:.3f} s "
                  f"({a['full_s'] / m['full_s']:.3f})")
    merged, adapter = projection_7b(rank, targets)
    print(f"LoRA sync projected to 7B (Llama-2-7B shape, r={rank}): merged {merged:,} bytes (bf16), "
          f"adapter {adapter:,} bytes (fp32), {adapter / merged:.4f} of it")
