"""The bucket wire format: safetensors-compatible packing, zero-copy unpacking from any byte buffer, and
corruption detection (every flipped byte, every truncation), with blake3 checksums over the same fields
as earlier versions' sha256 ones, whose buckets are still verified."""

from __future__ import annotations

import hashlib
import json

import blake3
import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from selfplay.generate.weights import decode_sync
from selfplay.sync.buckets import (
    BucketError,
    bucket_meta,
    bucket_nbytes,
    bucket_tensors,
    joined,
    pack_bucket_parts,
    pack_buckets,
    sync_digest,
    unpack_bucket,
)


def mixed() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed.weight": torch.randn(11, 6, generator=g),
        "model.norm.weight": torch.randn(6, generator=g).bfloat16(),
        "model.half": torch.randn(3, 5, generator=g).half(),
        "model.ids": torch.arange(7, dtype=torch.int64),
        "model.mask": torch.tensor([True, False, True]),
        "model.bytes": torch.arange(5, dtype=torch.uint8),
        "model.double": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "model.empty": torch.empty(0, 4),
        "model.transposed": torch.randn(4, 3, generator=g).t(),  # not contiguous: packed as a copy
    }


def reference_digest(tensors: dict[str, torch.Tensor], algorithm: str = "sha256") -> str:
    """The digest exactly as the first version of the format computed it (through ``.tobytes()``), with
    ``algorithm``: sha256 (earlier versions) or blake3 (now)."""
    h = hashlib.sha256() if algorithm == "sha256" else blake3.blake3()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def one_bucket(tensors: dict[str, torch.Tensor], version: int = 5) -> bytes:
    (blob,) = pack_buckets(tensors.items(), 64.0, version)
    return blob


def test_unpack_matches_safetensors_own_loader_on_a_mixed_dtype_bucket():
    tensors = mixed()
    blob = one_bucket(tensors)
    ours, meta = unpack_bucket(blob, expect_version=5)
    theirs = st_load(blob)
    assert meta["version"] == 5 and meta["index"] == 0
    assert ours.keys() == theirs.keys() == tensors.keys()
    for name, t in tensors.items():
        assert ours[name].dtype == theirs[name].dtype == t.dtype, name
        assert ours[name].shape == theirs[name].shape == t.shape, name
        assert torch.equal(ours[name], theirs[name]) and torch.equal(ours[name], t), name


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_buckets_written_by_safetensors_are_read_too(algorithm):
    """Also those of earlier versions (sha256): they are verified with the hash they record."""
    tensors = {k: v.contiguous() for k, v in mixed().items()}
    meta = json.dumps({"version": 1, "index": 0, algorithm: reference_digest(tensors, algorithm)})
    blob = st_save(tensors, metadata={"selfplay": meta})
    ours, _ = unpack_bucket(blob, expect_version=1)
    assert all(torch.equal(ours[n], t) for n, t in tensors.items())
    assert sync_digest([blob]) == hashlib.sha256(reference_digest(tensors, algorithm).encode()).hexdigest()
    bad = bytearray(blob)
    bad[-1] ^= 0x01  # the last data byte
    with pytest.raises(BucketError, match=f"bucket 0 checksum mismatch [(]{algorithm} "):
        decode_sync([bytes(bad)], 1, tensors)


def test_a_bucket_without_a_checksum_is_refused():
    tensors = {"a": torch.arange(6, dtype=torch.float32)}
    blob = st_save(tensors, metadata={"selfplay": json.dumps({"version": 1, "index": 0})})
    with pytest.raises(BucketError, match="bucket 0 carries no checksum"):
        decode_sync([blob], 1, tensors)
    with pytest.raises(BucketError, match="carries no checksum"):
        sync_digest([blob])


def test_digests_hash_the_fields_of_the_first_format_with_blake3():
    tensors = mixed()
    blobs = list(pack_buckets(tensors.items(), 0.0, 2))  # one tensor per bucket
    assert len(blobs) == len(tensors)
    for blob, (name, t) in zip(blobs, tensors.items()):
        meta = bucket_meta(blob)
        assert "sha256" not in meta and meta["blake3"] == reference_digest({name: t}, "blake3")
    assert sync_digest(blobs) == hashlib.sha256(
        b"".join(reference_digest({n: t}, "blake3").encode() for n, t in tensors.items())
    ).hexdigest()


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "numpy", "numpy-readonly"])
def test_any_byte_buffer_is_accepted_without_a_copy(kind):
    tensors = mixed()
    blob = one_bucket(tensors)
    arr = np.frombuffer(blob, dtype=np.uint8)  # read-only, like Ray's zero-copy reads
    buf = {
        "bytes": blob,
        "bytearray": bytearray(blob),
        "memoryview": memoryview(blob),
        "numpy": arr.copy(),
        "numpy-readonly": arr,
    }[kind]
    ours, _ = unpack_bucket(buf, expect_version=5)
    assert all(torch.equal(ours[n], t) for n, t in tensors.items())
    base = np.frombuffer(buf, dtype=np.uint8).ctypes.data
    for name, t in ours.items():
        if t.numel():  # a view into the buffer, not a copy
            assert base <= t.data_ptr() < base + len(blob), name


def test_a_misaligned_buffer_still_decodes():
    tensors = mixed()
    blob = one_bucket(tensors)
    shifted = np.frombuffer(b"x" + blob, dtype=np.uint8)[1:]  # data at an odd address
    ours, _ = unpack_bucket(shifted, expect_version=5)
    assert all(torch.equal(ours[n], t) for n, t in tensors.items())


def test_every_flipped_byte_is_detected():
    tensors = {"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 2).bfloat16()}
    blob = one_bucket(tensors, version=3)
    for pos in range(len(blob)):
        for mask in (0x01, 0xFF):
            bad = bytearray(blob)
            bad[pos] ^= mask
            with pytest.raises(BucketError):
                decode_sync([np.frombuffer(bytes(bad), dtype=np.uint8)], 3, tensors)


def test_every_truncation_and_extension_is_detected():
    blob = one_bucket(mixed())
    for size in range(len(blob)):
        with pytest.raises(BucketError):
            unpack_bucket(memoryview(blob)[:size])
    with pytest.raises(BucketError, match="truncated or padded"):
        bucket_tensors(blob + b"\0")


def test_not_a_buffer_or_not_a_bucket():
    with pytest.raises(BucketError, match="byte buffer"):
        unpack_bucket("not bytes")  # type: ignore[arg-type]
    with pytest.raises(BucketError):
        unpack_bucket(b"\x02\0\0\0\0\0\0\0[]")
    with pytest.raises(BucketError, match="version 5, expected 6"):
        unpack_bucket(one_bucket(mixed()), expect_version=6)


def test_scalars_and_shared_storage_pack():
    base = torch.randn(4, 4)
    tensors = {"scalar": torch.tensor(1.5), "tied.a": base, "tied.b": base}  # tied weights are written twice
    ours, _ = unpack_bucket(one_bucket(tensors))
    assert ours["scalar"].shape == () and float(ours["scalar"]) == 1.5
    assert torch.equal(ours["tied.a"], base) and torch.equal(ours["tied.b"], base)


@pytest.mark.parametrize("threads", [1, 3])
def test_decode_sync_on_threads_verifies_every_bucket(threads):
    tensors = mixed()
    blobs = list(pack_buckets(tensors.items(), 0.0, 4))
    named, digest = decode_sync(blobs, 4, tensors, threads=threads)
    assert digest == sync_digest(blobs) and all(torch.equal(t, tensors[n]) for n, t in named)
    for i in (0, len(blobs) - 1):  # the first and the last bucket, flipped in their last data byte
        bad = list(blobs)
        flipped = bytearray(bad[i])
        flipped[-1] ^= 0x01
        bad[i] = np.frombuffer(bytes(flipped), dtype=np.uint8)
        with pytest.raises(BucketError, match=f"bucket {i} checksum mismatch"):
            decode_sync(bad, 4, tensors, threads=threads)


def test_vllm_worker_reads_bucket_bytes_without_a_copy():
    from selfplay.generate.vllm_worker import _as_named_tensors

    tensors = mixed()
    blobs = list(pack_buckets(tensors.items(), 0.0, 1))
    named = dict(_as_named_tensors(blobs))  # what an engine in a separate process receives
    assert named.keys() == tensors.keys() and all(torch.equal(named[n], t) for n, t in tensors.items())
    assert _as_named_tensors(list(tensors.items())) == list(tensors.items())  # in-process: passed through


# ------------------------------------------------------------------------------------- split buckets
def contiguous_mixed() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in mixed().items()}


def test_a_split_bucket_is_the_joined_one_in_parts_and_views_the_tensors():
    tensors = contiguous_mixed()
    parts = pack_bucket_parts(tensors, 5, 0)
    blob = one_bucket(tensors)
    assert joined(parts) == blob and bucket_nbytes(parts) == len(blob) == bucket_nbytes(blob)
    assert bucket_meta(parts) == bucket_meta(blob) and sync_digest([parts]) == sync_digest([blob])
    owners = {t.data_ptr(): n for n, t in tensors.items() if t.numel()}
    assert sorted(p.ctypes.data for p in parts[1:]) == sorted(owners)  # the tensors' own memory: no copy
    ours, meta = unpack_bucket(parts, expect_version=5)
    assert meta["index"] == 0 and all(torch.equal(ours[n], t) for n, t in tensors.items())
    for name, t in ours.items():
        if t.numel():
            assert t.data_ptr() == tensors[name].data_ptr(), name  # read in place, too
    named, digest = decode_sync([tuple(parts)], 5, tensors)  # a tuple of parts is a split bucket as well
    assert digest == sync_digest([blob]) and dict(named).keys() == tensors.keys()


def test_split_buckets_from_pack_buckets_decode_like_joined_ones():
    tensors = contiguous_mixed()
    split = list(pack_buckets(tensors.items(), 0.0, 4, split=True))  # one tensor per bucket
    plain = list(pack_buckets(tensors.items(), 0.0, 4))
    assert [joined(s) for s in split] == plain
    named, digest = decode_sync(split, 4, tensors)
    assert digest == sync_digest(plain) and all(torch.equal(t, tensors[n]) for n, t in named)


def test_a_split_bucket_cut_anywhere_still_decodes():
    """Parts need not follow tensor boundaries: a tensor across two parts is read through a copy."""
    tensors = contiguous_mixed()
    blob = one_bucket(tensors)
    for cut in (9, len(blob) // 3, len(blob) - 1):
        header_len = 8 + int.from_bytes(blob[:8], "little")
        pieces = [blob[:header_len], blob[header_len:cut], blob[cut:]] if cut > header_len else None
        if pieces is None:
            with pytest.raises(BucketError, match="header"):
                unpack_bucket([blob[:cut], blob[cut:]])  # the header must lie in the first part
            continue
        ours, _ = unpack_bucket([np.frombuffer(p, dtype=np.uint8) for p in pieces if p], expect_version=5)
        assert all(torch.equal(ours[n], t) for n, t in tensors.items())


def test_a_split_bucket_with_a_flipped_missing_or_extra_part_is_refused():
    tensors = {"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 2).bfloat16()}
    parts = [bytes(p) for p in pack_bucket_parts(tensors, 3, 0)]
    for i in range(len(parts)):
        bad = list(parts)
        flipped = bytearray(bad[i])
        flipped[-1] ^= 0x01
        bad[i] = bytes(flipped)
        with pytest.raises(BucketError):
            decode_sync([bad], 3, tensors)
    with pytest.raises(BucketError, match="truncated or padded"):
        unpack_bucket(parts[:-1])
    with pytest.raises(BucketError, match="truncated or padded"):
        unpack_bucket([*parts, b"\0"])
    with pytest.raises(BucketError, match="no parts"):
        unpack_bucket([])
    with pytest.raises(BucketError, match="byte buffer"):
        unpack_bucket([parts[0], "not bytes"])


def test_a_split_bucket_is_written_to_a_file_as_the_joined_one(tmp_path):
    from selfplay.sync.filesystem import read_weights_dir, write_weights_dir

    tensors = contiguous_mixed()
    split = list(pack_buckets(tensors.items(), 0.0, 2, split=True))
    path = write_weights_dir(tmp_path, 2, split)
    assert read_weights_dir(path, 2) == [joined(s) for s in split]
