"""Real Ray + real vLLM (CPU) tier: weights pushed into a running two-replica pool, then checked.

"New weights" are the nano policy's weights plus seeded noise, held by an HF engine (the learner side:
``export_weights`` + ``probe_logps``, behind a ``LocalLearner`` handle). After each push both replicas'
greedy outputs must equal the HF model's token for token and their probe log-probs must match within
1e-4 (fp32). A bucket corrupted in transit is refused and the generators keep their previous weights and
version. Every push goes through the pool, which records what its replicas hold and where a restarted
one gets it again.

Each test sets up the state it starts from (the learner's weights from the initial ones and a seed, the
pool's version with a plain ``load_buckets``), so any subset runs alone (``-k``) and in any order.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import torch

from actors.learner import LocalLearner
from selfplay.generate import Sampling, make_engine
from selfplay.sync import ProbeSpec, SyncError
from selfplay.sync.base import Exported, Load, summarize
from selfplay.sync.filesystem import FilesystemSync, version_dir
from selfplay.sync.nccl import BroadcastSync
from selfplay.sync.object_store import ObjectStoreSync
from selfplay.sync.verify import DEFAULT_PROBE, verify_sync

ray = pytest.importorskip("ray", reason="needs Ray (absent on the GPU machines: docs/gpu.md)")

pytestmark = pytest.mark.slow  # a vLLM pool starts in 20-50 s on 2 shared cores

PROMPTS = ["1+2=", "12+35=", "hello", [{"role": "user", "content": "sort 3,1,2"}], "9*9=", "abc"]
GREEDY = Sampling(temperature=0, max_tokens=24)
PROBE = ProbeSpec(tolerance=1e-4, count=4, length=24)
BUCKET_MB = 0.25  # the nano policy (3.3 MB) travels in ~14 buckets


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    engine = make_engine("hf", tiny_model_dir, dtype="float32", batch_size=1)
    engine.initial = {k: v.clone() for k, v in engine.model.state_dict().items()}
    return engine


def new_weights(learner, seed: int) -> None:
    """The initial weights plus seeded noise (whatever an earlier test left); then make EOS win wherever the
    most frequent greedy token would, so that some greedy outputs stop early (EOS handling is compared too)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v + 0.03 * torch.randn(v.shape, generator=g) for k, v in learner.initial.items()}
    learner.model.load_state_dict(state)
    out = learner.generate(PROMPTS, GREEDY)
    common = Counter(t for grp in out for t in grp[0].token_ids[1:]).most_common(1)[0][0]
    head = learner.model.lm_head.weight.data
    eos = learner.tokenizer.eos_token_id
    head[eos] = head[common] * 1.05


def start_at(pool, learner, seed: int, version: int) -> None:
    """A test's starting state: the learner on ``seed``'s weights, every replica holding them as ``version``
    (a plain load, not the sync method under test)."""
    new_weights(learner, seed)
    pool.load_buckets(learner.export_weights(1.0, version), version)


def assert_replicas_match(pool, learner, version):
    want = [[c.token_ids for c in g] for g in learner.generate(PROMPTS, GREEDY)]
    for name, actor in zip(pool.names, pool.actors):  # every replica, not just the ones a shard hit
        got = ray.get(actor.generate.remote(PROMPTS, GREEDY, 0), timeout=120)
        assert [[c.token_ids for c in g] for g in got] == want, name
        assert {c.policy_version for g in got for c in g} == {version}
    seqs = [[1, 5, 10, 11, 12, 6, 14, 20, 30, 41], [3, 4, 5, 6, 7, 8]]
    expected = learner.probe_logps(seqs)
    for probes in pool.probe_logps(seqs):
        assert [len(x) for x in probes] == [len(y) for y in expected] == [len(q) - 1 for q in seqs]
        assert max(abs(a - b) for x, y in zip(probes, expected, strict=True) for a, b in zip(x, y, strict=True)) <= 1e-4
    return want


class CorruptInTransit:
    """A learner side whose export flips bytes in one bucket (an injected transport fault)."""

    def __init__(self, learner, bucket: int):
        self.learner, self.bucket = learner, bucket

    def export_weights(self, bucket_mb, version):
        blobs = self.learner.export_weights(bucket_mb, version)
        bad = bytearray(blobs[self.bucket])
        bad[len(bad) // 2] ^= 0xFF
        blobs[self.bucket] = bytes(bad)
        return blobs


class EngineActor(LocalLearner):
    """An HF engine in a Ray actor as the learner side: its buckets stay in the object store, as rank 0's of a
    learner group do (the summary is computed here: a test stand-in, not a learner group)."""

    def export(self, bucket_mb, version, part="policy", *, timeout=None):
        ref = self.learner.export_weights.remote(bucket_mb, version)
        return Exported(None, ref, *summarize(ray.get(ref, timeout=timeout)))

    def probe_logps(self, sequences, *, timeout=None):
        return ray.get(self.learner.probe_logps.remote(sequences), timeout=timeout)


def test_object_store_sync_from_a_remote_learner(sync_pool, learner):
    learner.model.load_state_dict(learner.initial)
    initial = [[c.token_ids for c in g] for g in learner.generate(PROMPTS, GREEDY)]
    new_weights(learner, seed=1)
    remote = ray.remote(num_cpus=0)(type(learner)).remote(str(learner.model_path), dtype=torch.float32)
    ray.get(remote.load_buckets.remote(learner.export_weights(1.0, 1), 1), timeout=300)
    report = ObjectStoreSync(BUCKET_MB, probe=PROBE, timeout_s=300).push(EngineActor(remote), sync_pool, version=1)
    assert (report.method, report.version, report.generators) == ("object_store", 1, sync_pool.names)
    # the learner saved nothing: the pool keeps the pushed buckets as where a restarted replica reloads them
    assert sync_pool.policy.weights.method == "load_buckets" and sync_pool.policy.checksum == report.checksum
    assert report.buckets > 5 and report.bytes > 3e6 and report.max_diff <= 1e-4
    assert {i["checksum"] for i in sync_pool.info()} == {report.checksum}
    sync_pool.expect_version(1, report.checksum)
    outputs = assert_replicas_match(sync_pool, learner, version=1)
    assert outputs != initial  # the new weights change what is generated
    assert any(len(t) < GREEDY.max_tokens for grp in outputs for t in grp)  # some stopped at EOS
    ray.kill(remote)


def test_corrupted_bucket_is_refused_and_previous_weights_kept(sync_pool, learner):
    start_at(sync_pool, learner, seed=5, version=5)
    before = sync_pool.info()
    with pytest.raises(SyncError, match=r"version 6 failed: generator-0\.load_buckets failed: BucketError.*checksum"):
        ObjectStoreSync(BUCKET_MB, probe=PROBE, timeout_s=300).push(LocalLearner(CorruptInTransit(learner, 3)),
                                                                    sync_pool, 6)
    after = sync_pool.info()
    assert sync_pool.policy.version == 5  # a refused load records nothing
    assert [(i["version"], i["checksum"]) for i in after] == [(i["version"], i["checksum"]) for i in before]
    assert_replicas_match(sync_pool, learner, version=5)  # still the version-5 weights, still usable


def test_filesystem_sync(sync_pool, learner, tmp_path):
    new_weights(learner, seed=2)
    sync = FilesystemSync(tmp_path, BUCKET_MB, probe=PROBE, timeout_s=300, keep=1)
    report = sync.push(LocalLearner(learner), sync_pool, version=2)
    assert report.version == 2 and report.max_diff <= 1e-4
    assert (version_dir(tmp_path, 2) / "manifest.json").is_file()
    assert sync_pool.policy.weights == Load("load_path", str(version_dir(tmp_path, 2)))  # kept (keep=1)
    assert_replicas_match(sync_pool, learner, version=2)


def test_verification_stops_on_stale_or_wrong_weights(sync_pool, learner, tiny_model_dir):
    start_at(sync_pool, learner, seed=7, version=7)
    other = LocalLearner(make_engine("hf", tiny_model_dir, dtype="float32"))  # the original weights, not version 7's
    learner = LocalLearner(learner)
    verify_sync(learner, sync_pool, 7, None, PROBE, timeout=120)  # the right weights pass
    with pytest.raises(SyncError, match="generator-0 holds policy version 7, expected 8"):
        sync_pool.expect_version(8)
    with pytest.raises(SyncError, match="checksum"):
        sync_pool.expect_version(7, "0" * 64)
    with pytest.raises(SyncError, match=r"generator-0 at version 7: probe log-probs differ .* by \d"):
        verify_sync(other, sync_pool, 7, None, PROBE, timeout=120)
    verify_sync(learner, sync_pool, 7, None, DEFAULT_PROBE, timeout=120)  # the (shorter) default probe too
    with pytest.raises(SyncError, match=r"generator-0 at version 7: probe log-probs differ"):
        verify_sync(other, sync_pool, 7, None, DEFAULT_PROBE, timeout=120)


def test_broadcast_sync_on_gloo(sync_pool, learner):
    """The NCCL method's code path with the gloo backend: driver = rank 0, generators = ranks 1, 2."""
    new_weights(learner, seed=3)
    sync, local = BroadcastSync(BUCKET_MB, backend="gloo", probe=PROBE, timeout_s=120), LocalLearner(learner)
    report = sync.push(local, sync_pool, version=3)
    assert report.method == "nccl" and report.version == 3 and report.max_diff <= 1e-4
    assert_replicas_match(sync_pool, learner, version=3)
    new_weights(learner, seed=4)
    assert sync.push(local, sync_pool, version=4).version == 4  # the group is reused
    assert sync_pool.policy.weights is None  # a broadcast leaves nothing to reload, and the learner saved nothing
    assert_replicas_match(sync_pool, learner, version=4)


class Timed:
    """The learner side, recording when each export ended and when each probe started."""

    def __init__(self, inner):
        self.inner, self.exported, self.probed = inner, [], []

    def export_weights(self, *args):
        out = self.inner.export_weights(*args)
        self.exported.append(time.perf_counter())
        return out

    def probe_logps(self, sequences):
        self.probed.append(time.perf_counter())
        return self.inner.probe_logps(sequences)


def test_from_the_second_sync_the_learner_probes_while_the_generators_load(sync_pool, learner):
    """The first push learns the generators' vocabulary and probes after the load; later pushes start the
    learner's probe right after the export, once, and still verify; a vocabulary that changed is probed
    again on the right sequences."""
    start_at(sync_pool, learner, seed=11, version=20)
    timed, sync = Timed(learner), ObjectStoreSync(bucket_mb=BUCKET_MB, probe=PROBE)
    handle = LocalLearner(timed)
    first = sync.push(handle, sync_pool, version=21)
    assert len(timed.probed) == 1 and timed.probed[0] >= timed.exported[0] + first.transfer_s
    new_weights(learner, seed=12)
    second = sync.push(handle, sync_pool, version=22)
    assert len(timed.probed) == 2 and timed.probed[1] < timed.exported[1] + second.transfer_s
    assert second.max_diff <= 1e-4
    assert_replicas_match(sync_pool, learner, version=22)
    sync.early.vocab -= 1  # as if the generators' vocabulary had changed since
    third = sync.push(handle, sync_pool, version=23)
    assert len(timed.probed) == 4 and third.max_diff <= 1e-4  # the early probe, then the right one
