"""Checking a whole weight sync before any of it touches an engine.

Every engine loads new weights through :func:`decode_sync`: each bucket is unpacked and verified
(sha256, version) with :func:`selfplay.sync.buckets.unpack_bucket`, the bucket indices must run
0..k-1, and the tensor names must be exactly the checkpoint's names (none missing, none unknown).
Only when *all* of that holds does the caller load anything, so a corrupt or incomplete sync leaves the
engine on its previous weights and version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from selfplay.sync.buckets import BucketError, unpack_bucket


def decode_sync(
    blobs: Sequence[bytes], version: int, expected_names: Iterable[str] | None = None
) -> tuple[list[tuple[str, torch.Tensor]], str]:
    """Verify and unpack every bucket of one sync. Returns ``(named tensors, sync digest)``.

    Raises :class:`BucketError` naming the problem (corrupt bucket, wrong version, missing bucket,
    duplicate, missing or unknown tensor names).
    """
    if not blobs:
        raise BucketError(f"sync to version {version} carried no buckets")
    named: list[tuple[str, torch.Tensor]] = []
    indices = []
    digest = hashlib.sha256()
    for blob in blobs:
        tensors, meta = unpack_bucket(bytes(blob) if not isinstance(blob, bytes) else blob, version)
        indices.append(meta.get("index"))
        digest.update(meta["sha256"].encode())
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
