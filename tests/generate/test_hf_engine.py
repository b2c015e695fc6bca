"""Tiny real model tier: the HF engine (the ``hf`` backend and the reference the vLLM engine is held to)."""

from __future__ import annotations

import pytest
import torch

from selfplay.generate import Sampling, make_engine
from selfplay.generate.types import encode_prompts
from selfplay.sync.buckets import BucketError, pack_buckets

PROMPTS = ["12+3=", [{"role": "user", "content": "sort 3,1,2"}], "hello", "9*9="]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return make_engine("hf", tiny_model_dir, dtype="float32", batch_size=4)


def tokens(groups):
    return [[c.token_ids for c in g] for g in groups]


def test_greedy_batched_equals_unbatched_and_n_copies(hf, tiny_model_dir):
    s = Sampling(n=2, temperature=0, max_tokens=12)
    batched = hf.generate(PROMPTS, s)
    single = make_engine("hf", tiny_model_dir, dtype="float32", batch_size=1).generate(PROMPTS, s)
    assert tokens(batched) == tokens(single)
    assert all(len(g) == 2 and g[0].token_ids == g[1].token_ids for g in batched)
    assert [[(c.prompt_index, c.sample_index) for c in g] for g in batched] == [[(i, 0), (i, 1)] for i in range(4)]
    assert all(c.finish_reason == "length" and len(c.token_ids) == 12 for g in batched for c in g)


def test_seeded_sampling_is_reproducible_and_split_independent(hf):
    s = Sampling(n=3, temperature=1.0, max_tokens=10, seed=3, logprobs=True)
    whole = hf.generate(PROMPTS, s)
    assert tokens(whole) == tokens(hf.generate(PROMPTS, s))
    tail = hf.generate(PROMPTS[2:], s, first_index=2)  # another split of the same request
    assert tokens(tail) == tokens(whole[2:]) and tail[0][0].prompt_index == 2
    assert tokens(whole) != tokens(hf.generate(PROMPTS, s.with_(seed=4)))
    assert len({c.token_ids for c in whole[0]}) > 1  # samples of one prompt differ
    c = whole[1][0]
    ids = hf.tokenizer.apply_chat_template(PROMPTS[1], add_generation_prompt=True, tokenize=False)
    prompt_ids = hf.tokenizer(ids, add_special_tokens=False)["input_ids"]
    probe = hf.probe_logps([prompt_ids + list(c.token_ids)])[0][-len(c.token_ids):]
    assert len(probe) == len(c.logprobs) == len(c.token_ids)
    assert max(abs(a - b) for a, b in zip(probe, c.logprobs, strict=True)) < 1e-4  # raw log-probs of the sampled tokens


def test_stop_strings_cut_text_and_tokens(hf):
    free = hf.generate(PROMPTS, Sampling(temperature=0, max_tokens=16))
    stop = free[0][0].text[5]  # a character the model is known to write
    cut = hf.generate(PROMPTS, Sampling(temperature=0, max_tokens=16, stop=(stop,)))[0][0]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert free[0][0].text.startswith(cut.text) and len(cut.token_ids) == len(cut.text) + 1  # char tokenizer


def test_load_buckets_roundtrip_and_corruption(hf, tiny_model_dir):
    other = make_engine("hf", tiny_model_dir, dtype="float32")
    new = {k: v + 0.05 * torch.randn_like(v) for k, v in other.model.state_dict().items()}
    other.model.load_state_dict(new)
    blobs = other.export_weights(bucket_mb=0.5, version=1)
    assert len(blobs) > 1
    seqs = [[1, 5, 10, 11, 12, 6, 14], [7, 8, 9]]
    before = hf.probe_logps(seqs)
    bad = list(blobs)
    flipped = bytearray(bad[-1])
    flipped[-3] ^= 0xFF
    bad[-1] = bytes(flipped)
    with pytest.raises(BucketError, match="checksum mismatch"):
        hf.load_buckets(bad, 1)
    with pytest.raises(BucketError, match="missing"):
        hf.load_buckets(list(pack_buckets(list(new.items())[:3], 1.0, 1)), 1)
    assert hf.version == 0 and hf.probe_logps(seqs) == before  # nothing was loaded
    checksum = hf.load_buckets(blobs, 1)
    assert hf.version == 1 and hf.checksum == checksum
    assert hf.probe_logps(seqs) == other.probe_logps(seqs)


def test_length_cap_is_per_prompt_not_per_batch(hf, tiny_model_dir):
    """Near ``max_model_len`` a prompt's completion must not depend on its batch-mates: a short prompt batched
    with one that leaves 5 tokens of room still gets its full ``max_tokens``, the long one its 5."""
    max_len, short = 96, "12+3="
    template = len(encode_prompts(hf.tokenizer, [short])[0]) - len(short)  # chat tokens around a user turn
    long_prompt = "".join(str(i % 10) for i in range(max_len - 5 - template))  # char tokenizer: 1 token each
    prompts = [short, long_prompt, "hello"]
    s = Sampling(temperature=0, max_tokens=20, logprobs=True)
    batched = make_engine("hf", tiny_model_dir, dtype="float32", max_model_len=max_len, batch_size=3)
    single = make_engine("hf", tiny_model_dir, dtype="float32", max_model_len=max_len, batch_size=1)
    got, want = batched.generate(prompts, s), single.generate(prompts, s)
    assert [len(g[0].token_ids) for g in want] == [20, 5, 20]  # the random nano policy writes no EOS here
    assert tokens(got) == tokens(want)
    assert [g[0].finish_reason for g in got] == [g[0].finish_reason for g in want] == ["length"] * 3
    for a, b in zip(got, want, strict=True):
        assert len(a[0].logprobs) == len(b[0].logprobs) == len(a[0].token_ids)
        assert max(abs(x - y) for x, y in zip(a[0].logprobs, b[0].logprobs, strict=True)) < 1e-4
    with pytest.raises(ValueError, match=r"prompt 1 has 96 tokens: no room under max_model_len=96"):
        batched.generate([short, long_prompt + "12345"], s)


def test_stop_token_ids_end_a_sample_at_that_token_kept(hf):
    """Llama-3 chat ends a turn with <|eot_id|> (128009), not its EOS: `stop_token_ids` must stop there."""
    free = hf.generate(PROMPTS, Sampling(temperature=0, max_tokens=16))
    ids = free[0][0].token_ids
    # Stop at a token from the middle of the free sample: the sample must end at that token's first occurrence
    # (a random nano policy may repeat tokens, so the first occurrence can come earlier than the middle).
    k = ids.index(ids[len(ids) // 2])
    cut = hf.generate(PROMPTS, Sampling(temperature=0, max_tokens=16, stop_token_ids=(ids[k],)))[0][0]
    assert cut.token_ids == ids[: k + 1] and cut.finish_reason == "stop"
    assert Sampling.from_config(type("G", (), {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1,
                                               "max_tokens": 4, "stop": [], "logprobs": False,
                                               "stop_token_ids": [128009]})()).stop_token_ids == (128009,)
