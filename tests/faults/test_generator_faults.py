"""A generator replica that dies or hangs mid-generation, on real two-replica pools in Ray.

The pool first moves to policy version 1 (another seed's weights), so a restarted replica, which comes
back with its start-up weights (version 0), would generate different records if it were not restored.
Faults are real: the replica's process exits (``os._exit``, as in a crash), blocks inside ``generate``
(both injected with ``GeneratorActor.inject_fault``) or is killed by Ray; Ray restarts the process and
the pool restores it. Each restart starts a vLLM engine again (about 20 s here), so the tests share one
pool and two restarts; each test first loads the weights it starts from, so any subset runs alone (``-k``).
"""

from __future__ import annotations

import time

import pytest

from selfplay.generate import Sampling
from selfplay.generate.shards import read_generations
from selfplay.remote import RemoteCallError

ray = pytest.importorskip("ray", reason="needs Ray (absent on the GPU machines: docs/gpu.md)")

pytestmark = pytest.mark.slow

PROMPTS = [f"{a}+{b}=" for a, b in [(1, 2), (12, 35), (7, 7), (40, 2), (9, 9), (3, 0), (55, 5), (8, 1)]]
SAMPLING = Sampling(n=2, temperature=1.0, max_tokens=8, seed=5, logprobs=True)


def records(groups):
    return [[(c.prompt_index, c.sample_index, c.token_ids, c.text, c.policy_version) for c in g] for g in groups]


def weight_buckets(model_dir, version):
    from safetensors.torch import load_file

    from selfplay.sync.buckets import pack_buckets

    return list(pack_buckets(load_file(model_dir / "model.safetensors").items(), version=version))


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    from selfplay.models import build_policy

    return build_policy(tmp_path_factory.mktemp("v1") / "nano", preset="nano", tokenizer="char", seed=1)


@pytest.fixture(scope="module")
def pool(ray_local, tiny_model_dir):
    from actors.generator import GeneratorPool
    from selfplay.config.schema import GenerationConfig, ResourcesConfig

    cfg = GenerationConfig(backend="vllm", replicas=2, shard_size=2, max_model_len=256)
    p = GeneratorPool(tiny_model_dir, cfg, ResourcesConfig(placement="spread"), dtype="float32",
                      start_timeout_s=300, shard_timeout_s=300, call_timeout_s=300)
    yield p
    p.shutdown()


def test_replica_killed_mid_generation_is_restored_and_only_its_shard_regenerated(pool, v1, tmp_path):
    pool.load_buckets(weight_buckets(v1, 1), version=1)  # what a sync does; the pool keeps the buckets
    fault_free, _ = pool.generate(PROMPTS, SAMPLING, shard_dir=tmp_path / "ref")
    assert {c.policy_version for g in fault_free for c in g} == {1}
    before = pool.info()[1]
    ray.get(pool.actors[1].inject_fault.remote("generate", "exit", 0.5), timeout=60)
    out, _ = pool.generate(PROMPTS, SAMPLING, shard_dir=tmp_path / "generations")

    assert records(out) == records(fault_free)  # same records as without the fault (seeded)
    assert read_generations(tmp_path / "generations") == out  # every shard on disk, once
    run = pool.last_run
    # generator-1's first shard (shard 1) died with it and is the only one generated twice
    assert run["attempts"] == {1: 2}
    assert run["restored"] == ["generator-1"]
    assert sorted(i for shards in run["by_replica"].values() for i in shards) == [0, 1, 2, 3]
    after = pool.info()[1]
    assert after["worker_id"] != before["worker_id"] and after["restarted"] is True  # a new process
    assert after["version"] == 1 and after["checksum"] == before["checksum"] == pool.policy.checksum


def test_hung_replica_is_named_in_time_and_restored_from_the_policy_directory(pool, tmp_path):
    from selfplay.models import build_policy

    v2 = build_policy(tmp_path / "v2", preset="nano", tokenizer="char", seed=2)
    pool.load_dir(v2, 2)  # through the pool, which records where version 2 is
    assert (pool.policy.version, pool.policy.base) == (2, str(v2))
    want, _ = pool.generate(PROMPTS, SAMPLING)
    assert {c.policy_version for g in want for c in g} == {2}

    ray.get(pool.actors[0].inject_fault.remote("generate", "hang"), timeout=60)
    pool.shard_timeout_s = 4.0
    try:
        start = time.monotonic()
        with pytest.raises(RemoteCallError, match=r"generator-0\.generate\(shard 0\) did not finish within 4 s"):
            pool.generate(PROMPTS, SAMPLING)
        assert time.monotonic() - start < 4.0 + 20.0  # the deadline, plus the other replica's shard in hand
    finally:
        pool.shard_timeout_s = 300.0
    # the hung replica was killed and Ray restarted it on its start-up weights (version 0); the next
    # call restores it from the directory the pool loaded, before generating
    got, _ = pool.generate(PROMPTS, SAMPLING)
    assert records(got) == records(want)
    infos = pool.info()
    assert [i["version"] for i in infos] == [2, 2] and infos[0]["restarted"] is True


def test_weights_the_pool_was_not_told_about_are_never_guessed(pool, v1):
    pool.load_buckets(weight_buckets(v1, 1), version=1)
    # the replicas hold version 1 and the pool knows where it is; version 3 it does not
    with pytest.raises(RemoteCallError, match=r"generator-1 must be restored to version 3.*only where version 1 is"):
        pool.submit_restore(1, 3)
