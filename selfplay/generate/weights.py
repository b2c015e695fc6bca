"""Checking a whole weight sync before any of it touches an engine.

Every engine loads new weights through :func:`decode_sync`: each bucket is opened and verified
(header and version by :func:`~selfplay.sync.buckets.open_bucket`, checksum by ``check_bucket``), the
bucket indices must run 0..k-1, and the tensor names must be exactly the checkpoint's names (none
missing, none unknown).
Only when *all* of that holds does the caller load anything, so a corrupt or incomplete sync leaves the
engine on its previous weights and version.

Buckets may be any byte buffer (``bytes``, a numpy ``uint8`` array read from Ray's object store, a
``memoryview``); they are not copied here. The returned tensors are read-only views into them: the
engine copies them into its own parameters when it loads them.

Hashing is most of the cost of verifying (blake3 runs at about 6 GB/s per core here, sha256 at about
1.3). Both hashers release the GIL, so buckets are verified on as many threads as this process may use
for compute (torch's thread count, which ``setup_env`` sets per actor): one thread per actor on a shared
CPU node, several on a GPU node's generator, where a multi-GB model would otherwise spend seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from selfplay.sync.buckets import BucketError, Buffer, bucket_nbytes, check_bucket, checksum_of, open_bucket


def _unpack_all(blobs: Sequence[Buffer], version: int, threads: int) -> list[tuple[dict, dict]]:
    """Every bucket opened (headers, versions; in this thread) and then hash-checked on up to ``threads``
    threads. Raises the first error in bucket order."""
    opened = [open_bucket(blob, version) for blob in blobs]
    threads = min(threads, len(opened))
    if threads <= 1:
        for tensors, meta in opened:
            check_bucket(tensors, meta)
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="verify-bucket") as pool:
            list(pool.map(lambda tm: check_bucket(*tm), opened))
    return opened


def decode_sync(
    blobs: Sequence[Buffer],
    version: int,
    expected_names: Iterable[str] | None = None,
    threads: int | None = None,
) -> tuple[list[tuple[str, torch.Tensor]], str]:
    """Verify and unpack every bucket of one sync. Returns ``(named tensors, sync digest)``; the tensors
    are views into ``blobs`` (keep them alive, do not write to the views). ``threads`` (default: torch's
    thread count) bounds how many buckets are hashed at once.

    Raises :class:`BucketError` naming the problem (corrupt bucket, wrong version, missing bucket,
    duplicate, missing or unknown tensor names).
    """
    if not blobs:
        raise BucketError(f"sync to version {version} carried no buckets")
    named: list[tuple[str, torch.Tensor]] = []
    indices = []
    digest = hashlib.sha256()
    for tensors, meta in _unpack_all(blobs, version, threads or torch.get_num_threads()):
        indices.append(meta.get("index"))
        digest.update(checksum_of(meta)[1].encode())
        named.extend(tensors.items())
    if indices != list(range(len(blobs))):
        raise BucketError(f"sync to version {version}: bucket indices {indices} are not 0..{len(blobs) - 1}")
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise BucketError(f"sync to version {version}: tensors sent twice: {dup[:5]}")
    if expected_names is not None:
        expected = set(expected_names)
        missing, unknown = sorted(expected - set(names)), sorted(set(names) - expected)
        if missing or unknown:
            raise BucketError(
                f"sync to version {version} does not match the model's weights: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unknown {unknown[:5]}{'...' if len(unknown) > 5 else ''}"
            )
    return named, digest.hexdigest()


def load_stats(blobs: Sequence[Buffer], version: int, verify_s: float, load_s: float) -> dict[str, Any]:
    """What one weight load cost an engine (reported by its ``info()["last_load"]``)."""
    return {
        "version": version,
        "buckets": len(blobs),
        "bytes": sum(bucket_nbytes(b) for b in blobs),
        "verify_s": round(verify_s, 4),
        "load_s": round(load_s, 4),
    }


def checkpoint_names(model_dir: str | Path) -> list[str]:
    """Tensor names stored in a Hugging Face model directory's safetensors files (headers only)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted(json.loads(index.read_text())["weight_map"])
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no *.safetensors weights")
    names: list[str] = []
    for path in files:
        with path.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        names.extend(k for k in header if k != "__metadata__")
    return sorted(names)
