"""Pure and tiny tiers of the sync: whole-sync verification, the filesystem layout, probe comparison,
the factory, and the broadcast protocol on gloo (the NCCL code path, on CPU threads)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import torch

from selfplay.config.schema import SyncConfig
from selfplay.generate.weights import checkpoint_names, decode_sync
from selfplay.sync import ProbeSpec, make_sync
from selfplay.sync.buckets import BucketError, pack_buckets, sync_digest
from selfplay.sync.filesystem import FilesystemSync, prune, read_weights_dir, version_dir, write_weights_dir
from selfplay.sync.nccl import BroadcastEndpoint, BroadcastSync
from selfplay.sync.object_store import ObjectStoreSync
from selfplay.sync.verify import max_abs_diff, probe_sequences

TENSORS = {f"layer{i}.weight": torch.arange(64 * (i + 1), dtype=torch.float32).reshape(-1, 8) for i in range(4)}


def blobs(version=3, bucket_mb=0.0005):
    return list(pack_buckets(TENSORS.items(), bucket_mb, version))


def test_decode_sync_accepts_only_a_whole_uncorrupted_sync():
    b = blobs()
    assert len(b) == 4
    named, digest = decode_sync(b, 3, TENSORS)
    assert dict(named).keys() == TENSORS.keys() and digest == sync_digest(b)
    assert all(torch.equal(t, TENSORS[n]) for n, t in named)
    with pytest.raises(BucketError, match="version 3, expected 4"):
        decode_sync(b, 4, TENSORS)
    with pytest.raises(BucketError, match="indices"):
        decode_sync(b[:1] + b[2:], 3, TENSORS)
    with pytest.raises(BucketError, match="indices"):
        decode_sync([b[1], b[0], *b[2:]], 3, TENSORS)
    with pytest.raises(BucketError, match=r"missing \['extra.weight'\]"):
        decode_sync(b, 3, [*TENSORS, "extra.weight"])
    with pytest.raises(BucketError, match="unknown"):
        decode_sync(b, 3, list(TENSORS)[1:])
    with pytest.raises(BucketError, match="no buckets"):
        decode_sync([], 3)
    for pos in (20, len(b[2]) - 1):  # header and data bytes
        bad = bytearray(b[2])
        bad[pos] ^= 0x5A
        with pytest.raises(BucketError):
            decode_sync([*b[:2], bytes(bad), b[3]], 3, TENSORS)


def test_checkpoint_names_read_headers_only(tiny_model_dir):
    from safetensors.torch import load_file

    assert checkpoint_names(tiny_model_dir) == sorted(load_file(tiny_model_dir / "model.safetensors"))


def test_filesystem_layout_is_atomic_checked_and_pruned(tmp_path):
    for v in (1, 2, 3):
        path = write_weights_dir(tmp_path, v, blobs(v))
    assert path == str(version_dir(tmp_path, 3)) and read_weights_dir(path, 3) == blobs(3)
    with pytest.raises(BucketError, match="holds version 3, expected 4"):
        read_weights_dir(path, 4)
    (version_dir(tmp_path, 3) / "bucket_00001.safetensors").unlink()
    with pytest.raises(BucketError, match="3 bucket files"):
        read_weights_dir(path, 3)
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000002", "v000003"]


def test_filesystem_repush_never_leaves_the_version_missing(tmp_path):
    """A re-push of the same version swaps the directory in whole: a reader polling it meanwhile always
    finds a complete version directory (the old or the new), never a missing or half-deleted one."""
    many = [list(pack_buckets(TENSORS.items(), 0.0005, 5)) * 8 for _ in range(2)]  # 32 files: a slow delete
    write_weights_dir(tmp_path, 5, many[0])
    stop, seen, failures = threading.Event(), [0], []

    def read() -> None:
        while not stop.is_set():
            try:
                assert len(read_weights_dir(version_dir(tmp_path, 5), 5)) == 32
                seen[0] += 1
            except (BucketError, OSError, AssertionError) as exc:
                failures.append(repr(exc))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            write_weights_dir(tmp_path, 5, many[i % 2])
    finally:
        stop.set()
        reader.join()
    assert seen[0] > 0 and failures == []
    assert [p.name for p in tmp_path.iterdir()] == ["v000005"]  # no temporaries left behind


def test_a_reader_caught_by_a_repush_mid_read_rereads_the_new_directory(tmp_path, monkeypatch):
    """The race the polling test above hits only under load, forced: the reader has the old directory
    open when a re-push swaps the new one in and deletes the old one's files."""
    import selfplay.sync.filesystem as fs

    old, new = blobs(5), list(pack_buckets(TENSORS.items(), 0.001, 5))
    assert len(old) != len(new)
    write_weights_dir(tmp_path, 5, old)
    calls, real = [], fs._read_open_dir

    def read_after_a_repush(path, fd, version):
        calls.append(fd)
        if len(calls) == 1:
            write_weights_dir(tmp_path, 5, new)  # swaps v000005, then removes what fd still points at
        return real(path, fd, version)

    monkeypatch.setattr(fs, "_read_open_dir", read_after_a_repush)
    assert read_weights_dir(version_dir(tmp_path, 5), 5) == new and len(calls) == 2
    monkeypatch.setattr(fs, "_read_open_dir", real)
    (version_dir(tmp_path, 5) / "bucket_00000.safetensors").unlink()  # damaged, not swapped: no retry
    with pytest.raises(BucketError, match="bucket files, its manifest lists"):
        read_weights_dir(version_dir(tmp_path, 5), 5)


def test_probe_helpers():
    assert probe_sequences(50, 3, 5, seed=1) == probe_sequences(50, 3, 5, seed=1) != probe_sequences(50, 3, 5, 2)
    assert all(0 <= t < 50 for s in probe_sequences(50) for t in s)
    assert max_abs_diff([[0.0, -1.0]], [[0.0, -1.25]]) == 0.25
    assert max_abs_diff([[0.0]], [[0.0, 1.0]]) == float("inf")
    assert max_abs_diff([[float("nan")]], [[0.0]]) == float("inf")


def test_make_sync_factory(tmp_path):
    s = make_sync(SyncConfig(bucket_mb=8, probe_tolerance=1e-4))
    assert isinstance(s, ObjectStoreSync) and s.bucket_mb == 8 and s.probe == ProbeSpec(tolerance=1e-4)
    fs = make_sync(SyncConfig(method="filesystem", verify=False), run_dir=tmp_path)
    assert isinstance(fs, FilesystemSync) and fs.root == tmp_path and fs.probe is None
    assert isinstance(make_sync(SyncConfig(method="nccl")), BroadcastSync)
    with pytest.raises(ValueError, match="shared_dir"):
        make_sync(SyncConfig(method="filesystem"))


def _store(world):
    return torch.distributed.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                                      timeout=timedelta(seconds=30))


def test_broadcast_protocol_on_gloo():
    store = _store(3)
    got, errors = {}, []

    def receiver(rank):
        try:
            got[rank] = BroadcastEndpoint("127.0.0.1", store.port, 3, rank, "gloo", 30).receive()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=receiver, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    BroadcastEndpoint("127.0.0.1", store.port, 3, 0, "gloo", 30).send(blobs())
    for t in threads:
        t.join(30)
    assert not errors and {r: [bytes(b) for b in v] for r, v in got.items()} == {1: blobs(), 2: blobs()}


def test_broadcast_times_out_with_an_error_instead_of_hanging():
    store = _store(2)
    peer = {}
    t = threading.Thread(target=lambda: peer.setdefault(1, BroadcastEndpoint("127.0.0.1", store.port, 2, 1,
                                                                                "gloo", 1)))
    t.start()
    sender = BroadcastEndpoint("127.0.0.1", store.port, 2, 0, "gloo", 1)
    t.join(30)
    with pytest.raises((RuntimeError, TimeoutError), match="rank 0: broadcast of bucket count"):
        sender.send(blobs())  # rank 1 joined but never receives
