"""Real vLLM (CPU) tier: a weight sync must reset vLLM's prefix cache.

vLLM keeps the KV blocks of prompt prefixes it has seen (blocks of 128 tokens on CPU) and reuses them for
later prompts with the same prefix. Those blocks were computed with the weights of the time; after a
sync they are stale, and ``VLLMEngine.load_buckets`` drops them (``reset_prefix_cache``). A prompt must
fill at least one block for this to matter, so these prompts are chat messages of about 300 tokens that
share a 279-character system message (two full blocks), as a long shared instruction would in a real run.

The engine generates on the initial weights (filling the cache), receives new weights, and generates the
same prompts again: tokens and log-probs must equal the HF reference on the new weights (what a fresh
engine computes), within 1e-4 in float32. Greedy decoding: it needs no per-request seeds.
"""

from __future__ import annotations

import pytest
import torch
from vllm_steps import completions, write_blobs

from selfplay.generate import Sampling, make_engine
from selfplay.generate.types import encode_prompts

pytestmark = pytest.mark.slow  # a vLLM engine in the tier's child process

SYSTEM = ("You are a careful calculator. Read the question, add the two numbers digit by digit from the "
          "right, carry when a column passes nine, check the sum once more, and then answer with the sum "
          "alone, no words. Examples: 12+30=42, 7+8=15, 99+1=100, 250+250=500, 41+19=60, 5+5=10, 0+7=7.")
PROMPTS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{a}+{b}="}]
           for a, b in [(12, 35), (7, 7), (40, 2), (9, 99)]]
GREEDY = Sampling(temperature=0, max_tokens=16, logprobs=True)


def test_sync_resets_the_prefix_cache(tiny_model_dir, tmp_path, vllm_child):
    learner = make_engine("hf", tiny_model_dir, dtype="float32", max_model_len=512, batch_size=1)
    ids = encode_prompts(learner.tokenizer, PROMPTS)
    assert all(280 <= len(x) <= 320 for x in ids), [len(x) for x in ids]  # 2 full blocks + a tail
    old = learner.generate(PROMPTS, GREEDY)
    g = torch.Generator().manual_seed(5)
    learner.model.load_state_dict({k: v + 0.03 * torch.randn(v.shape, generator=g)
                                   for k, v in learner.model.state_dict().items()})
    blobs = write_blobs(learner.export_weights(bucket_mb=1.0, version=1), tmp_path / "blobs")
    sampling = {"temperature": 0, "max_tokens": 16, "logprobs": True}
    before, _, hits_at_sync, after, hits_after = vllm_child.run_steps(tiny_model_dir, [
        {"op": "generate", "prompts": PROMPTS, "sampling": sampling},
        {"op": "load", "blobs": blobs, "version": 1},
        {"op": "prefix_hits"},
        {"op": "generate", "prompts": PROMPTS, "sampling": sampling},
        {"op": "prefix_hits"},
    ], tmp_path)
    before, after = completions(before), completions(after)
    assert [g[0].token_ids for g in before] == [g[0].token_ids for g in old]  # the engine started on the old weights
    assert hits_after > hits_at_sync  # the prompts after the sync did reuse cached prefix blocks
    want = learner.generate(PROMPTS, GREEDY)
    assert [g[0].token_ids for g in after] == [g[0].token_ids for g in want]
    assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]  # the new weights matter
    assert {c.policy_version for g in after for c in g} == {1}
    for prompt_ids, got, ref in zip(ids, after, want, strict=True):
        probe = learner.probe_logps([prompt_ids + list(got[0].token_ids)])[0][-len(got[0].token_ids):]
        assert len(got[0].logprobs) == len(probe) == len(ref[0].logprobs)
        assert max(abs(a - b) for a, b in zip(got[0].logprobs, probe, strict=True)) <= 1e-4
