"""Weight sync through the Ray object store (the default; CPU and multi-node).

The learner's buckets are put in the object store once (a remote learner's return value already is
there) and every generator pulls the same object and loads it; Ray moves it between nodes. No
parameter-by-parameter messages: a sync is ``ceil(model bytes / bucket_mb)`` buckets in one object.
Local buckets are put as numpy uint8 arrays, which Ray hands to readers without a copy; generators
verify and load them in place (views into the shared memory, which is immutable once put), so a sync
costs one copy into the store plus what each engine's own reload copies. A remote learner's return
value is stored as it was returned: ``bytes`` are copied once more by every reader, numpy arrays are not.
The pool keeps that object as what a restarted generator reloads, unless the learner has the same weights
in a directory (then the directory, and the object is freed after the push).
"""

from __future__ import annotations

import time
from typing import Any

from selfplay.sync.base import LearnerHandle, Load, Part, Staged
from selfplay.sync.buckets import is_split
from selfplay.sync.strategy import WeightSync
from selfplay.sync.verify import DEFAULT_PROBE, ProbeSpec

LOAD_METHOD: dict[str, str] = {"policy": "load_buckets", "base": "load_buckets", "adapter": "load_adapter"}
"""The generator method that loads each part's buckets."""


def as_arrays(blobs: list[Any]) -> list[Any]:
    """Buckets as uint8 numpy views (no copy; a split bucket as a list of them). Ray stores numpy arrays
    out of band and readers map them without copying; ``bytes`` would be copied once more on each side
    (``bench/sync.py`` measures both)."""
    import numpy as np

    def arr(b: Any) -> Any:
        return np.frombuffer(b, dtype=np.uint8)

    return [[arr(p) for p in b] if is_split(b) else arr(b) for b in blobs]


class ObjectStoreSync(WeightSync):
    method = "object_store"

    def __init__(
        self, bucket_mb: float = 64.0, *, probe: ProbeSpec | None = DEFAULT_PROBE, timeout_s: float = 600.0
    ):
        super().__init__(bucket_mb, probe, timeout_s)

    def stage(self, learner: LearnerHandle, pool: Any, version: int, part: Part) -> Staged:
        """Export one part; local buckets are put in the object store once, for every generator to read."""
        import ray

        start = time.perf_counter()
        ex = learner.export(self.bucket_mb, version, part, timeout=self.timeout_s)
        export_s = time.perf_counter() - start
        ref = ex.ref if ex.ref is not None else ray.put(as_arrays(ex.blobs))
        load = Load(LOAD_METHOD[part], ref)
        return Staged(part, load, export_s, (ex.checksum, ex.bytes, ex.count), restore=load)
