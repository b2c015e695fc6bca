"""Real Ray + real vLLM (CPU) + a real LoRA learner: the adapter-only sync (``sync.lora: adapter``).

One vLLM generator actor started for adapters (``AdapterSpec``) on the nano base, and an in-process LoRA
learner (real DeepSpeed, real PEFT) that trains one DPO round. The adapter sync must move the adapter's
bytes only, pass the verification every sync passes (checksums, version, probe log-probs), and leave the
generator computing what the merged model computes: its greedy outputs and their log-probs are then
compared with the same engine after a merged push (which replaces the base and drops the adapter), and
after a base + adapter push back (through the filesystem method). Every push goes through the pool, which
records what its replica holds (no caller tells it): a replica Ray restarts gets base + current adapter back.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from selfplay.config.schema import LORA_DEFAULT_TARGETS, GenerationConfig, ResourcesConfig, TrainConfig
from selfplay.generate import Sampling
from selfplay.generate.adapter import AdapterSpec
from selfplay.sync import ProbeSpec
from selfplay.sync.base import Load, lora_parts
from selfplay.sync.filesystem import FilesystemSync
from selfplay.sync.object_store import ObjectStoreSync

ray = pytest.importorskip("ray", reason="needs Ray (absent on the GPU machines: docs/gpu.md)")

pytestmark = pytest.mark.slow  # a vLLM engine and a DeepSpeed learner start, and one DPO round runs

R, ALPHA = 4, 8.0
# Chat prompts of a few hundred characters (the nano policy's character tokenizer: one token each), and short ones.
PROMPTS = [[{"role": "user", "content": f"Add the numbers {i}, {2 * i} and {3 * i}; " + "show each step. " * 12}]
           for i in range(3)] + ["12+35=", "hello", "9*9="]
GREEDY = Sampling(temperature=0, max_tokens=24, logprobs=True)
PROBE = ProbeSpec(tolerance=1e-4, count=2, length=16)


def pairs(n: int = 16) -> pa.Table:
    rng = random.Random(0)
    rows = [{"prompt": json.dumps([{"role": "user", "content": f"{rng.randint(0, 99)}+{rng.randint(0, 99)}="}]),
             "chosen": "ab" * rng.randint(2, 3), "rejected": "z" * rng.randint(3, 6), "pair_id": i} for i in range(n)]
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def lora_pool(ray_local, tiny_model_dir):
    from actors.generator import GeneratorPool

    cfg = GenerationConfig(backend="vllm", replicas=1, shard_size=8, max_model_len=512)
    pool = GeneratorPool(tiny_model_dir, cfg, ResourcesConfig(), dtype="float32", start_timeout_s=300,
                         shard_timeout_s=300, call_timeout_s=300,
                         engine_kwargs={"lora": AdapterSpec(R, ALPHA, tuple(LORA_DEFAULT_TARGETS))})
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A LoRA learner after one DPO round, and its exported policy directory (merged + ``adapter/``)."""
    from actors.learner import LocalLearner

    cfg = TrainConfig(learning_rate=2e-2, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant",
                      lora={"r": R, "alpha": ALPHA})
    learner = LocalLearner.start(tiny_model_dir, cfg, threads=1)
    learner.train_round(learner.compute_reference(pairs()))
    policy = learner.save_hf(tmp_path_factory.mktemp("lora_policy") / "policy")
    yield learner, policy
    learner.shutdown()


def outputs(pool) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    got = ray.get(pool.actors[0].generate.remote(PROMPTS, GREEDY, 0), timeout=300)
    return [(g[0].token_ids, g[0].logprobs) for g in got]


def assert_same(adapter_out, merged_out, tolerance: float = 1e-4) -> None:
    assert [t for t, _ in adapter_out] == [t for t, _ in merged_out]
    worst = max(abs(a - b) for (_, x), (_, y) in zip(adapter_out, merged_out) for a, b in zip(x, y, strict=True))
    assert worst <= tolerance, worst


def test_adapter_sync_moves_only_the_adapter_and_serves_the_merged_policy(lora_pool, trained, tmp_path):
    learner, policy = trained
    base_out = outputs(lora_pool)
    base = learner.lora_base()
    parts = lora_parts(base, lora_pool.policy.base)
    assert parts == ("adapter",)  # the generator started on the learner's base: nothing else to move
    sync = ObjectStoreSync(64.0, probe=PROBE, timeout_s=300)
    adapter = sync.push(learner, lora_pool, 1, parts)
    saved_adapter = Load("load_adapter_dir", str(Path(policy) / "adapter"))
    assert (lora_pool.policy.version, lora_pool.policy.adapter) == (1, saved_adapter)  # recorded by the push
    merged_bytes = sum(len(b) for b in learner.export_weights(64.0, 1))
    n_adapter = sum(t.numel() * 4 for t in learner.learner.engine.module.parameters() if t.requires_grad)
    # only adapter bytes moved: the fp32 adapter tensors plus one bucket header
    assert adapter.parts == ["adapter"] and n_adapter <= adapter.bytes < n_adapter + 16_384
    assert adapter.bytes < merged_bytes / 10 and adapter.max_diff <= 1e-4
    info = lora_pool.info()[0]
    assert (info["version"], info["checksum"], info["adapter"]) == (1, adapter.checksum, True)
    assert info["last_load"]["bytes"] == adapter.bytes
    served = outputs(lora_pool)
    assert served != base_out  # the adapter changed the policy

    merged = sync.push(learner, lora_pool, 2)  # the merged weights: a full push, the adapter dropped
    assert merged.parts == ["policy"] and merged.bytes == merged_bytes and lora_pool.info()[0]["adapter"] is False
    assert_same(served, outputs(lora_pool))

    # base once, then the adapter; through the filesystem method (its own directories and load calls)
    again = FilesystemSync(tmp_path, 64.0, probe=PROBE, timeout_s=300).push(learner, lora_pool, 3,
                                                                            lora_parts(base, str(policy)))
    assert again.parts == ["base", "adapter"] and again.bytes == merged_bytes + adapter.bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000003-adapter", "v000003-base"]
    # the learner saved both: a restart reloads its directories, not the sync's files
    assert lora_pool.policy.weights == Load("load_dir", base) and lora_pool.policy.adapter == saved_adapter
    assert lora_pool.info()[0]["adapter"] is True
    assert_same(served, outputs(lora_pool))

    # Ray restarts the replica: the pool gives it base + the current adapter back, verified
    lora_pool.kill_replica(0)
    assert lora_pool.heal() == ["generator-0"]
    info = lora_pool.info()[0]
    assert (info["version"], info["adapter"]) == (3, True)
    assert_same(served, outputs(lora_pool))
