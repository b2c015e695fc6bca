"""Real vLLM (CPU) tier in bfloat16: generate, receive a sync, generate again, and pass the probe check.

Every other vLLM test runs in float32, where vLLM and HF agree to 1e-4; a bf16 run (``policy.dtype:
bfloat16``) is what users run on GPUs, and it takes other code paths (bf16 weight loading and repacking,
bf16 attention and matmul kernels).

The learner side is an HF engine in bf16 holding the new weights; vLLM receives the *same* bf16 tensors,
so the two differ only in kernels. Tolerance: 2e-2 on |log-prob| differences, the project's default
``sync.probe_tolerance`` for bf16. bf16 keeps 8 significant bits, a relative rounding error of up to
2^-9 = 2e-3 on each activation; the two engines round at different points (vLLM fuses and repacks its
linear and attention kernels on CPU, HF runs them eager), so each of the 4 layers adds differences of a
few such roundings, and a log-prob, a difference of logits of magnitude ~1-5, moves by about 1e-2 at
most (measured here: 7e-3 to 1e-2 over two weight seeds). A wrong sync moves it much further: the test
also checks that the weights from before the sync miss the new reference by more than 5x the tolerance
(measured: 1.2-1.3), so the tolerance still tells right from wrong.
Greedy tokens are not compared: in bf16 a near-tie between two logits may break differently.
"""

from __future__ import annotations

import pytest
import torch
from test_vllm_prefix_cache import PROMPTS
from vllm_steps import completions, write_blobs

from selfplay.generate import make_engine
from selfplay.generate.types import encode_prompts

pytestmark = pytest.mark.slow  # a vLLM engine in the tier's child process

TOLERANCE = 2e-2


def worst(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for xs, ys in zip(a, b, strict=True) for x, y in zip(xs, ys, strict=True))


def test_bf16_generate_sync_probe(tiny_model_dir, tmp_path, vllm_child):
    learner = make_engine("hf", tiny_model_dir, dtype="bfloat16", max_model_len=512, batch_size=1)
    old = make_engine("hf", tiny_model_dir, dtype="bfloat16", max_model_len=512, batch_size=1)
    g = torch.Generator().manual_seed(7)
    learner.model.load_state_dict({k: (v.float() + 0.03 * torch.randn(v.shape, generator=g)).to(torch.bfloat16)
                                   for k, v in learner.model.state_dict().items()})
    buckets = learner.export_weights(bucket_mb=1.0, version=1)
    blobs = write_blobs(buckets, tmp_path / "blobs")
    ids = encode_prompts(learner.tokenizer, PROMPTS)
    sampling = {"temperature": 0, "max_tokens": 16, "logprobs": True}
    before, checksum, after, probe = vllm_child.run_steps(tiny_model_dir, [
        {"op": "generate", "prompts": PROMPTS, "sampling": sampling},
        {"op": "load", "blobs": blobs, "version": 1},
        {"op": "generate", "prompts": PROMPTS, "sampling": sampling},
        {"op": "probe_generated"},
    ], tmp_path, dtype="bfloat16")
    before, after = completions(before), completions(after)
    seqs = [p + list(g[0].token_ids) for p, g in zip(ids, after, strict=True)]
    assert {c.policy_version for g in after for c in g} == {1} and len(checksum) == 64
    new_ref, old_ref = learner.probe_logps(seqs), old.probe_logps(seqs)
    sampled = [list(g[0].logprobs) for g in after]
    tail = [r[-len(s):] for r, s in zip(new_ref, sampled, strict=True)]
    print(f"bf16: sampled vs HF {worst(sampled, tail):.4g}, probe vs HF {worst(probe, new_ref):.4g}, "
          f"old weights vs new {worst(old_ref, new_ref):.4g}")
    assert worst(sampled, tail) <= TOLERANCE  # what vLLM generated came from the new weights
    assert worst(probe, new_ref) <= TOLERANCE  # the sync check's own measurement passes
    assert worst(old_ref, new_ref) > 5 * TOLERANCE  # and it would catch the weights from before the sync
    assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]
