"""What every weight sync shares: the ``WeightSync`` protocol, its report and error, and the learner side.

A sync moves the learner's weights (buckets from :mod:`selfplay.sync.buckets`) into every generator,
then (optionally) verifies them (:mod:`selfplay.sync.verify`). Sides:

* the *learner side* has ``export_weights(bucket_mb, version)`` (a list of byte buffers: ``bytes``, or
  numpy ``uint8`` arrays from a learner actor, which Ray stores without pickling them) and
  ``probe_logps(sequences) -> list[list[float]]``. It is a local object (a ``Learner``), one Ray actor
  handle, or a learner group (:class:`~actors.learner.LearnerGroup`, recognised by ``export_ref``).
  A sync never holds a group's rank handles: the group calls every rank (a ZeRO-3 gather is
  collective), keeps rank 0's buckets in the object store (``export_ref``) and, when a rank dies or
  hangs meanwhile, marks itself lost like any other of its calls;
* the *generators* are a :class:`~actors.generator.GeneratorPool` (anything with ``actors`` and
  ``names``), a list of actor handles, or local engines (``VLLMEngine``/``HFEngine``).

Every remote call goes through :mod:`selfplay.remote` (timeouts, errors naming the actor and the
method): a hung transfer (TRL #6797) becomes an error, not a stalled run. Loading calls
(``load_buckets``/``load_path``) pass ``retry_dead=True``: a generator that dies while Ray restarts it
is called again once it is back (Ray queues the call meanwhile), within the same deadline and at most
``RETRIES`` times, because a load replaces every weight and is safe to repeat.

What a push carries is a sequence of *parts* (:data:`Part`), each exported and loaded as its own set of
buckets, verified once at the end: ``policy`` (the learner's weights, LoRA adapters merged in; the
default), or with LoRA and ``sync.lora: adapter`` ``adapter`` (the adapter tensors alone, loaded with
``load_adapter`` on the base the generators hold), preceded by ``base`` (the base weights, loaded with
``load_buckets``) when the generators' base is not the learner's, or the merged ``policy`` instead
(:func:`lora_parts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from selfplay.remote import RemoteCallError, all_ready, is_remote, ray_get

Part = Literal["policy", "base", "adapter"]
LOAD_METHOD: dict[str, str] = {"policy": "load_buckets", "base": "load_buckets", "adapter": "load_adapter"}
"""The generator method that loads each part's buckets."""


def lora_parts(learner_base: str | None, generators_base: str | None, reference: str = "initial"
               ) -> tuple[Part, ...]:
    """The parts of an adapter-only sync: the adapter alone when the generators serve it on the learner's
    own base (the same directory). Else a full push: with ``reference: initial`` the base and the adapter
    on it (the base stays the learner's for the rest of the run); with ``previous`` the merged policy
    (the learner merges it into its base at the next round's start, so the generators then hold that
    base already and the next sync is the adapter alone)."""
    from pathlib import Path

    same = (learner_base is not None and generators_base is not None
            and Path(learner_base).resolve() == Path(generators_base).resolve())
    if same:
        return ("adapter",)
    return ("policy",) if reference == "previous" else ("base", "adapter")


class SyncError(RuntimeError):
    """A sync that failed or could not be verified; the run must stop rather than generate."""


@dataclass
class SyncReport:
    method: str
    version: int
    buckets: int
    bytes: int
    checksum: str
    export_s: float
    transfer_s: float
    generators: list[str] = field(default_factory=list)
    verify_s: float | None = None
    max_diff: float | None = None
    parts: list[str] = field(default_factory=lambda: ["policy"])

    @property
    def seconds(self) -> float:
        return self.export_s + self.transfer_s + (self.verify_s or 0.0)

    @property
    def gb_per_s(self) -> float:
        """Bytes delivered to all generators per second of transfer."""
        return self.bytes * len(self.generators) / max(self.transfer_s, 1e-9) / 1e9

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 4), "gb_per_s": round(self.gb_per_s, 3)}


class WeightSync(Protocol):
    method: str

    def push(self, learner: Any, generators: Any, version: int, parts: Sequence[Part] = ("policy",)) -> SyncReport:
        """Deliver ``parts`` of the learner's current weights to every generator as ``version`` (and verify)."""
        ...


def combine(reports: Sequence[SyncReport]) -> SyncReport:
    """One report for the parts of a push, in order: bytes, buckets and seconds add up; the checksum is the
    last part's (what the generators report holding once all parts are loaded)."""
    last = reports[-1]
    if len(reports) == 1:
        return last
    return SyncReport(last.method, last.version, sum(r.buckets for r in reports), sum(r.bytes for r in reports),
                      last.checksum, sum(r.export_s for r in reports), sum(r.transfer_s for r in reports),
                      last.generators, parts=[p for r in reports for p in r.parts])


# ------------------------------------------------------------------------------- the learner side
def learner_call(learner: Any, method: str, args: tuple, timeout: float) -> Any:
    """``method(*args)`` on the learner side: a learner group applies its own bookkeeping and ``timeout``."""
    if is_remote(learner, method):
        return ray_get(getattr(learner, method).remote(*args), f"learner.{method}", timeout)
    if hasattr(learner, "export_ref"):
        return getattr(learner, method)(*args, timeout=timeout)
    return getattr(learner, method)(*args)


def summarize(blobs: Sequence[bytes]) -> tuple[str, int, int]:
    """``(sync checksum, total bytes, bucket count)`` of a list of buckets (reads headers only)."""
    from selfplay.sync.buckets import bucket_nbytes, sync_digest

    return sync_digest(blobs), sum(bucket_nbytes(b) for b in blobs), len(blobs)


@dataclass
class Exported:
    """The learner's buckets of one sync: local bytes, or rank 0's ObjectRef (never fetched by the driver)."""

    blobs: list[bytes] | None
    ref: Any
    checksum: str
    bytes: int
    count: int


def export(learner: Any, bucket_mb: float, version: int, timeout: float, part: Part = "policy") -> Exported:
    """Ask the learner side for its buckets of ``part``. A remote export stays in the object store; its summary
    is computed next to the data (by the exporting rank, or a small task) instead of pulling it into the driver."""
    if hasattr(learner, "export_ref"):  # a learner group: every rank exports, rank 0's buckets stay remote
        ref, summary = learner.export_ref(bucket_mb, version, timeout=timeout, **_part(part))
        if ref is None:  # the group's learner runs in this process: summary holds the buckets themselves
            return Exported(list(summary), None, *summarize(summary))
        return Exported(None, ref, *summary)
    if is_remote(learner, "export_weights"):
        ref = learner.export_weights.remote(bucket_mb, version, **_part(part))
        if not all_ready([ref], timeout):
            raise RemoteCallError(f"learner.export_weights did not answer within {timeout:.0f} s", "timeout")
        checksum, nbytes, count = ray_get(_remote(summarize).remote(ref), "summarize(buckets)", timeout)
        return Exported(None, ref, checksum, nbytes, count)
    blobs = list(learner.export_weights(bucket_mb, version, **_part(part)))
    return Exported(blobs, None, *summarize(blobs))


def _part(part: Part) -> dict[str, Any]:
    """The export call's ``part`` keyword; none for ``policy``, so a learner side that predates parts (or
    wraps one, as the fault tests do) still answers a plain sync."""
    return {} if part == "policy" else {"part": part}


_REMOTE: dict[Any, Any] = {}


def _remote(fn: Any) -> Any:
    """``fn`` as a zero-CPU Ray task (created once per process)."""
    if fn not in _REMOTE:
        import ray

        _REMOTE[fn] = ray.remote(num_cpus=0)(fn)
    return _REMOTE[fn]
