"""Real Ray + real vLLM (CPU) tier: a two-replica generator pool on the nano policy.

Greedy outputs equal the HF reference token for token; seeded sampling is reproducible and does not
depend on how prompts were sharded; n samples come back for every prompt in order; an interrupted
sharded run resumes generating only the missing shards.
"""

from __future__ import annotations

import os

import pytest

from selfplay.generate import Sampling, make_engine
from selfplay.generate.shards import ShardError, read_generations

pytestmark = pytest.mark.slow  # a vLLM pool starts in 20-50 s on 2 shared cores

PROMPTS = [f"{a}+{b}=" for a, b in [(1, 2), (12, 35), (7, 7), (40, 2), (9, 99), (3, 0), (55, 5)]] + [
    [{"role": "user", "content": "sort 3,1,2"}], "hello", [{"role": "user", "content": "x"}]]


def tokens(groups):
    return [[c.token_ids for c in g] for g in groups]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return make_engine("hf", tiny_model_dir, dtype="float32", batch_size=1)


def test_greedy_matches_hf_token_for_token(gen_pool, hf):
    s = Sampling(n=2, temperature=0, max_tokens=24)
    got, seconds = gen_pool.generate(PROMPTS, s)
    want = hf.generate(PROMPTS, s)
    assert tokens(got) == tokens(want)
    assert [[c.text for c in g] for g in got] == [[c.text for c in g] for g in want]
    assert [c.finish_reason for g in got for c in g] == [c.finish_reason for g in want for c in g]
    assert seconds > 0 and gen_pool.version() == 0
    infos = gen_pool.info()
    assert len(infos) == 2 and all(i["node"] for i in infos), infos  # both replicas up, each on a node


def test_greedy_with_stop_strings_matches_hf(gen_pool, hf):
    """Stop strings on vLLM against the HF engine: the same cut tokens (the token completing a stop string
    kept), the same text (cut before it), the same finish reasons. The stop strings are taken from what
    the model writes: a one-character one and a two-character one that may span two tokens."""
    free = hf.generate(PROMPTS, Sampling(temperature=0, max_tokens=24))
    texts = [g[0].text for g in free if len(g[0].text) > 12]
    stop = (texts[0][6], texts[-1][9:11])
    s = Sampling(n=1, temperature=0, max_tokens=24, stop=stop, logprobs=True)
    got, _ = gen_pool.generate(PROMPTS, s)
    want = hf.generate(PROMPTS, s)
    assert tokens(got) == tokens(want)
    assert [g[0].text for g in got] == [g[0].text for g in want]
    assert [g[0].finish_reason for g in got] == [g[0].finish_reason for g in want]
    cut = [g[0] for g in want if g[0].finish_reason == "stop" and g[0].token_ids[-1] != hf.tokenizer.eos_token_id]
    assert cut, "no completion ended at a stop string"
    assert all(not any(x in c.text for x in stop) for g in got for c in g)
    for a, b in zip(got, want, strict=True):
        assert len(a[0].logprobs) == len(b[0].logprobs) == len(a[0].token_ids)
        assert max(abs(x - y) for x, y in zip(a[0].logprobs, b[0].logprobs, strict=True)) < 1e-4


def test_seeded_sampling_reproducible_in_order_and_shard_independent(gen_pool, hf):
    s = Sampling(n=3, temperature=1.0, top_p=0.95, max_tokens=16, seed=123, logprobs=True)
    a, _ = gen_pool.generate(PROMPTS, s)
    b, _ = gen_pool.generate(PROMPTS, s)
    assert tokens(a) == tokens(b)
    assert [[(c.prompt_index, c.sample_index) for c in g] for g in a] == [
        [(i, j) for j in range(3)] for i in range(len(PROMPTS))]
    assert all(len({c.token_ids for c in g}) > 1 for g in a)  # the n samples differ
    # one replica alone, one big shard: the same samples (seeds depend on the prompt's index only)
    engine_out = gen_pool.actors[1].generate.remote(PROMPTS, s, 0)
    import ray

    assert tokens(ray.get(engine_out, timeout=120)) == tokens(a)
    assert tokens(gen_pool.generate(PROMPTS, s.with_(seed=124))[0]) != tokens(a)
    # sampled-token log-probs are the model's raw log-probs (HF probe on prompt + completion)
    c = a[1][2]
    from selfplay.generate.types import encode_prompts

    prompt_ids = encode_prompts(hf.tokenizer, [PROMPTS[1]])[0]  # the engines' own prompt encoding
    probe = hf.probe_logps([prompt_ids + list(c.token_ids)])[0][-len(c.token_ids):]
    assert len(probe) == len(c.logprobs) == len(c.token_ids)
    assert max(abs(x - y) for x, y in zip(probe, c.logprobs, strict=True)) < 1e-4


class Crash(Exception):
    pass


def test_interrupted_run_resumes_only_missing_shards(gen_pool, tmp_path):
    s = Sampling(n=2, temperature=1.0, max_tokens=8, seed=9, logprobs=True)
    out_dir = tmp_path / "generations"
    seen = []

    def crash_after_two(index):
        seen.append(index)
        if len(seen) == 2:
            raise Crash("injected driver crash")

    with pytest.raises(Crash):
        gen_pool.generate(PROMPTS, s, shard_dir=out_dir, on_shard=crash_after_two)
    written = sorted(p.name for p in out_dir.glob("shard_*.parquet"))
    assert len(written) == 2  # 4 shards of 3 prompts planned; two finished before the crash
    mtimes = {p.name: os.stat(p).st_mtime_ns for p in out_dir.glob("shard_*.parquet")}

    resumed, _ = gen_pool.generate(PROMPTS, s, shard_dir=out_dir)
    run = gen_pool.last_run
    assert sorted(run["reused"]) == sorted(seen) and sorted(run["generated"] + run["reused"]) == [0, 1, 2, 3]
    assert not set(run["generated"]) & set(seen)
    assert all(os.stat(out_dir / n).st_mtime_ns == t for n, t in mtimes.items())  # reused, not rewritten
    on_disk = read_generations(out_dir)
    assert on_disk == resumed  # whole records, log-probs included
    keys = [(c.prompt_index, c.sample_index) for g in on_disk for c in g]
    assert keys == sorted(set(keys)) and len(keys) == 2 * len(PROMPTS)  # no duplicates, none missing
    assert tokens(resumed) == tokens(gen_pool.generate(PROMPTS, s)[0])  # same as an uninterrupted run
    with pytest.raises(ShardError, match="different request"):
        gen_pool.generate(PROMPTS, s.with_(seed=10), shard_dir=out_dir)


def test_stop_token_ids_match_hf(gen_pool, hf):
    free = hf.generate(PROMPTS[:3], Sampling(temperature=0, max_tokens=16))
    stop = free[1][0].token_ids[3]
    s = Sampling(temperature=0, max_tokens=16, stop_token_ids=(stop,))
    got, _ = gen_pool.generate(PROMPTS[:3], s)
    want = hf.generate(PROMPTS[:3], s)
    assert tokens(got) == tokens(want)
    assert got[1][0].token_ids[-1] == stop and got[1][0].finish_reason == "stop"
