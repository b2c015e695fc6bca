"""Pure tier: sampling records, per-prompt seeds, prompt encoding, and parquet shards (no engine)."""

from __future__ import annotations

import pytest

from selfplay.config.schema import GenerationConfig
from selfplay.generate import Completion, Sampling, encode_prompts
from selfplay.generate.shards import (
    ShardError,
    completed_shards,
    plan_shards,
    read_generations,
    read_shard,
    shard_path,
    write_shard,
)
from selfplay.generate.types import cut_at_stop


def test_sampling_from_config_and_overrides():
    cfg = GenerationConfig(n=3, temperature=0.7, top_k=5, max_tokens=12, stop=["\n"], logprobs=True)
    s = Sampling.from_config(cfg, seed=11)
    assert (s.n, s.temperature, s.top_p, s.top_k, s.max_tokens, s.stop, s.seed, s.logprobs) == (
        3, 0.7, 1.0, 5, 12, ("\n",), 11, True)
    assert Sampling.from_config(cfg, temperature=0).greedy
    with pytest.raises(ValueError, match="top_k"):
        Sampling(top_k=0)
    with pytest.raises(ValueError, match="n must be"):
        Sampling(n=0)


def test_prompt_seeds_are_stable_distinct_and_spread():
    s = Sampling(seed=5)
    seeds = [s.prompt_seed(i) for i in range(1000)]
    assert seeds == [Sampling(seed=5, n=9).prompt_seed(i) for i in range(1000)]  # only seed and index matter
    assert len(set(seeds)) == 1000 and all(0 <= x < 2**30 for x in seeds)
    assert Sampling(seed=6).prompt_seed(0) != seeds[0]
    assert Sampling(seed=None).prompt_seed(3) is None
    assert Sampling(seed=5).fingerprint() == s.fingerprint() != Sampling(seed=5, n=2).fingerprint()


def test_encode_prompts_renders_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = encode_prompts(tok, ["12+3=", [{"role": "user", "content": "12+3="}]])
    # a plain string is one user turn for a model with a chat template: it is prompted as it was trained
    assert ids[0] == ids[1]
    assert tok.decode(ids[1]) == "<s><u>12+3=<a>" and ids[1][0] == tok.bos_token_id  # one bos, from the template
    tok.chat_template = None  # a base model: plain text is encoded as is, chat messages are an error
    assert tok.decode(encode_prompts(tok, ["12+3="])[0]) == "12+3="
    with pytest.raises(ValueError, match="chat template"):
        encode_prompts(tok, [[{"role": "user", "content": "12+3="}]])
    with pytest.raises(TypeError):
        encode_prompts(tok, [42])


def test_cut_at_stop():
    assert cut_at_stop("ab\ncd", ("\n",)) == ("ab", True)
    assert cut_at_stop("abcd", ("x", "c", "b")) == ("a", True)
    assert cut_at_stop("abcd", ()) == ("abcd", False)


def _groups(shard, n=2, version=0):
    return [[Completion(i, j, (i, j, 7), f"p{i}s{j}", "length", (-0.5,) * 3 if j else None, version)
             for j in range(n)] for i in range(shard.start, shard.stop)]


def test_shards_roundtrip_resume_and_errors(tmp_path):
    prompts = [f"q{i}" for i in range(7)]
    s = Sampling(n=2, seed=1)
    shards = plan_shards(prompts, 3, s, version=4)
    assert [(x.start, x.stop) for x in shards] == [(0, 3), (3, 6), (6, 7)]
    d = tmp_path / "generations"
    assert completed_shards(d, shards) == set()
    write_shard(d, shards[0], _groups(shards[0]))
    write_shard(d, shards[2], _groups(shards[2]))
    (d / ".shard_00001.parquet.tmp-dead").write_bytes(b"half")  # a crash mid-write leaves only a temp file
    assert completed_shards(d, shards) == {0, 2}
    assert not list(d.glob(".shard_*"))
    assert read_shard(shard_path(d, 2)) == _groups(shards[2])
    with pytest.raises(ShardError, match=r"shards \[1\] of 3 are missing"):
        read_generations(d)
    write_shard(d, shards[1], _groups(shards[1]))
    out = read_generations(d)
    assert [[c.prompt_index for c in g] for g in out] == [[i, i] for i in range(7)]
    assert out[4][1].logprobs == (-0.5,) * 3 and out[4][0].logprobs is None
    # a resume with other prompts, sampling or version must not reuse these shards
    for changed in (plan_shards(prompts[:6] + ["other"], 3, s, 4), plan_shards(prompts, 3, s.with_(seed=2), 4),
                    plan_shards(prompts, 3, s, 5)):
        with pytest.raises(ShardError, match="different request"):
            completed_shards(d, changed)
    with pytest.raises(ShardError, match="expected prompts 0..2"):
        write_shard(d, shards[0], _groups(shards[1]))
