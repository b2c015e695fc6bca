"""The sync stage: push the trained weights into the running generators, then check them.

* :mod:`~selfplay.sync.buckets`: the wire format (size-bounded safetensors buckets, blake3 each).
* :mod:`~selfplay.sync.base`: the two sides' interfaces (``LearnerHandle``; ``GeneratorSide``, which the
  generator pool implements), ``WeightSync.push(learner, pool, version)``, ``SyncReport``, ``SyncError``
  (remote calls and their timeouts are :mod:`selfplay.remote`'s).
* Methods, each a transfer strategy the pool loads through: :mod:`~selfplay.sync.object_store`
  (default), :mod:`~selfplay.sync.filesystem`, :mod:`~selfplay.sync.nccl` (bucketed broadcast; GPUs).
* :mod:`~selfplay.sync.verify`: versions, checksums and probe log-probs after every sync.

:func:`make_sync` is the plain factory from ``SyncConfig``. Importing this package imports no engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.remote import RemoteCallError
from selfplay.sync.base import LearnerHandle, SyncError, SyncReport
from selfplay.sync.strategy import WeightSync
from selfplay.sync.verify import ProbeSpec


def make_sync(cfg: Any, run_dir: str | Path | None = None, *, timeout_s: float = 600.0) -> WeightSync:
    """The configured ``WeightSync`` for a ``SyncConfig``; ``run_dir`` is the default shared directory."""
    probe = ProbeSpec(tolerance=cfg.probe_tolerance) if cfg.verify else None
    if cfg.method == "object_store":
        from selfplay.sync.object_store import ObjectStoreSync

        return ObjectStoreSync(cfg.bucket_mb, probe=probe, timeout_s=timeout_s)
    if cfg.method == "filesystem":
        from selfplay.sync.filesystem import FilesystemSync

        shared = cfg.shared_dir or run_dir
        if shared is None:
            raise ValueError("sync.shared_dir: the filesystem method needs a directory every node can see")
        return FilesystemSync(shared, cfg.bucket_mb, probe=probe, timeout_s=timeout_s)
    if cfg.method == "nccl":
        from selfplay.sync.nccl import BroadcastSync

        return BroadcastSync(cfg.bucket_mb, backend="nccl", probe=probe, timeout_s=timeout_s)
    raise ValueError(f"sync.method: unknown method {cfg.method!r}")


__all__ = ["LearnerHandle", "ProbeSpec", "RemoteCallError", "SyncError", "SyncReport", "WeightSync", "make_sync"]
