"""Weight sync through the Ray object store (the default; CPU and multi-node).

The learner's buckets are put in the object store once (a remote learner's return value already is
there) and every generator pulls the same object and loads it; Ray moves it between nodes. No
parameter-by-parameter messages: a sync is ``ceil(model bytes / bucket_mb)`` buckets in one object.
Local buckets are put as numpy uint8 arrays, which Ray hands to readers without a copy; generators
verify and load them in place (views into the shared memory, which is immutable once put), so a sync
costs one copy into the store plus what each engine's own reload copies. A remote learner's return
value is stored as it was returned: ``bytes`` are copied once more by every reader, numpy arrays are not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from selfplay.remote import RemoteCallError, call_all, is_remote, targets
from selfplay.sync.base import LOAD_METHOD, Part, SyncError, SyncReport, combine, export
from selfplay.sync.verify import DEFAULT_PROBE, EarlyProbes, ProbeSpec, finish, loaded_report


def as_arrays(blobs: list[Any]) -> list[Any]:
    """Buckets as uint8 numpy views (no copy; a split bucket as a list of them). Ray stores numpy arrays
    out of band and readers map them without copying; ``bytes`` would be copied once more on each side
    (measured: 0.5 s vs 0.2 s to put 207 MB, 0.16 s vs 0.003 s to get)."""
    import numpy as np

    from selfplay.sync.buckets import is_split

    def arr(b: Any) -> Any:
        return np.frombuffer(b, dtype=np.uint8)

    return [[arr(p) for p in b] if is_split(b) else arr(b) for b in blobs]


class ObjectStoreSync:
    method = "object_store"

    def __init__(
        self, bucket_mb: float = 64.0, *, probe: ProbeSpec | None = DEFAULT_PROBE, timeout_s: float = 600.0
    ):
        self.bucket_mb = bucket_mb
        self.probe = probe
        self.timeout_s = timeout_s
        self.early = EarlyProbes()

    def push(self, learner: Any, generators: Any, version: int, parts: Sequence[Part] = ("policy",)) -> SyncReport:
        named = targets(generators)
        reports = [self._deliver(learner, named, version, part, last=i == len(parts) - 1)
                   for i, part in enumerate(parts)]
        return finish(combine(reports), learner, generators, self.probe, self.timeout_s, self.early)

    def _deliver(self, learner: Any, named: list[tuple[str, Any]], version: int, part: Part, last: bool
                 ) -> SyncReport:
        """Export one part and load it into every generator; the report of that part (not yet verified)."""
        start = time.perf_counter()
        ex = export(learner, self.bucket_mb, version, self.timeout_s, part)
        export_s = time.perf_counter() - start
        if last:
            self.early.start(learner, self.probe, self.timeout_s)  # the learner probes while the generators load

        start = time.perf_counter()
        payload = ex.blobs
        if any(is_remote(t, LOAD_METHOD[part]) for _, t in named):
            import ray

            payload = ex.ref if ex.ref is not None else ray.put(as_arrays(ex.blobs))
        elif payload is None:
            raise SyncError(
                "a remote learner's buckets cannot be pushed to local engines; use generator actors"
            )
        try:
            checksums = call_all(named, LOAD_METHOD[part], (payload, version), self.timeout_s, retry_dead=True)
        except RemoteCallError as exc:
            what = "" if part == "policy" else f" ({part})"
            raise SyncError(f"sync to version {version}{what} failed: {exc}") from exc
        report = loaded_report(self.method, named, checksums, ex.checksum, version, ex.bytes, ex.count, export_s,
                               time.perf_counter() - start)
        report.parts = [part]
        return report
