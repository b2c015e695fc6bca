"""What every weight sync shares: the ``WeightSync`` protocol, its report and error, and calls with timeouts.

A sync moves the learner's weights (buckets from :mod:`selfplay.sync.buckets`) into every generator,
then (optionally) verifies them (:mod:`selfplay.sync.verify`). Sides:

* the *learner side* has ``export_weights(bucket_mb, version) -> list[bytes]`` and
  ``probe_logps(sequences) -> list[list[float]]``. It is a local object, a Ray actor handle, or a list
  of actor handles (the DeepSpeed ranks: every rank is called, since a ZeRO-3 gather is collective, and
  rank 0's answer is used);
* the *generators* are a :class:`~actors.generator.GeneratorPool` (anything with ``actors`` and
  ``names``), a list of actor handles, or local engines (``VLLMEngine``/``HFEngine``).

Every remote call goes through :func:`call_all`/:func:`ray_get`, which wait with a timeout and raise an
error naming the actor and the method: a hung transfer (TRL #6797) becomes an error, not a stalled run.
Loading calls (``load_buckets``/``load_path``) pass ``retry_dead=True``: a generator that dies while
Ray restarts it is called again once it is back (Ray queues the call meanwhile), within the same
deadline and at most ``RETRIES`` times, because a load replaces every weight and is safe to repeat.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class SyncError(RuntimeError):
    """A sync that failed or could not be verified; the run must stop rather than generate."""


class RemoteCallError(RuntimeError):
    """A remote call that failed or did not answer in time; the message names actor and method."""


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

    def push(self, learner: Any, generators: Any, version: int) -> SyncReport:
        """Deliver the learner's current weights to every generator as ``version`` (and verify them)."""
        ...


# ------------------------------------------------------------------------------- remote plumbing
def is_remote(obj: Any, method: str) -> bool:
    """True if ``obj.method`` is a Ray actor method (has ``.remote``)."""
    return callable(getattr(getattr(obj, method, None), "remote", None))


def ray_get(ref: Any, what: str, timeout: float) -> Any:
    """``ray.get`` with a timeout; failures re-raised as :class:`RemoteCallError` naming ``what``."""
    import ray

    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise RemoteCallError(f"{what} did not answer within {timeout:.0f} s") from None
    except ray.exceptions.RayActorError as exc:
        raise RemoteCallError(f"{what} failed: its actor died: {_last_error_line(exc)}") from exc
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        raise RemoteCallError(f"{what} failed: {type(cause).__name__}: {_first_line(cause)}") from exc


def _last_error_line(exc: BaseException) -> str:
    """The line of a (possibly remote) traceback that names the exception, e.g. a failed ``__init__``."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
    return (errors[-1] if errors else lines[0] if lines else type(exc).__name__)[:500]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def targets(generators: Any) -> list[tuple[str, Any]]:
    """``(name, handle or engine)`` for each generator."""
    if hasattr(generators, "actors"):
        return list(zip(generators.names, generators.actors))
    return [(f"generator-{i}", g) for i, g in enumerate(generators)]


RETRIES = 3


def call_all(named: Sequence[tuple[str, Any]], method: str, args: tuple, timeout: float,
             retry_dead: bool = False) -> list[Any]:
    """Call ``method(*args)`` on every target (remote ones concurrently); results in order.

    Raises :class:`RemoteCallError` naming the first failing target. With ``retry_dead``, a call whose
    actor died is sent again (Ray delivers it once a restarted actor is back) until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    pending = []
    for name, t in named:
        if is_remote(t, method):
            pending.append((name, getattr(t, method).remote(*args)))
        else:
            pending.append((name, _local(t, method, args, name)))
    out = []
    for (name, r), (_, t) in zip(pending, named):
        if isinstance(r, _Done):
            out.append(r.value)
        else:
            out.append(_get(r, t, name, method, args, deadline, RETRIES if retry_dead else 0))
    return out


def _get(ref: Any, target: Any, name: str, method: str, args: tuple, deadline: float, retries: int) -> Any:
    import ray

    what = f"{name}.{method}"
    deaths = 0
    while True:
        try:
            return ray_get(ref, what, max(1.0, deadline - time.monotonic()))
        except RemoteCallError as exc:
            cause = exc.__cause__
            dead = isinstance(cause, ray.exceptions.RayActorError)
            if not dead or retries == 0 or time.monotonic() + 1.0 >= deadline:
                raise
            if not isinstance(cause, ray.exceptions.ActorUnavailableError):  # a death, not "still restarting"
                deaths += 1
                if deaths > retries:
                    raise
            time.sleep(1.0)  # Ray is restarting it: ask again
            ref = getattr(target, method).remote(*args)


@dataclass
class _Done:
    value: Any


def _local(target: Any, method: str, args: tuple, name: str) -> _Done:
    try:
        return _Done(getattr(target, method)(*args))
    except Exception as exc:
        raise RemoteCallError(f"{name}.{method} failed: {type(exc).__name__}: {_first_line(exc)}") from exc


def learner_submit(learner: Any, method: str, args: tuple) -> Any:
    """Start ``method`` on the learner side without waiting (wait with :func:`learner_result`).

    For a list of ranks every rank is called, since exports and probes may be collective (ZeRO-3).
    """
    if isinstance(learner, list | tuple):
        refs = [getattr(h, method).remote(*args) for h in learner]
        return _Ranks(refs)
    if is_remote(learner, method):
        return getattr(learner, method).remote(*args)
    return _Done(getattr(learner, method)(*args))


@dataclass
class _Ranks:
    refs: list[Any]


def learner_result(started: Any, what: str, timeout: float, fetch: bool = True) -> Any:
    """Wait for :func:`learner_submit`'s call. ``fetch=False`` returns rank 0's ObjectRef unfetched
    (after waiting for every rank to finish)."""
    import ray

    if isinstance(started, _Done):
        return started.value
    refs = started.refs if isinstance(started, _Ranks) else [started]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    if len(ready) < len(refs):
        raise RemoteCallError(f"learner.{what} did not answer within {timeout:.0f} s")
    for i, r in enumerate(refs[1:], start=1):
        ray_get(r, f"learner rank {i}.{what}", timeout)  # surface a failure on any rank
    return ray_get(refs[0], f"learner.{what}", timeout) if fetch else refs[0]


def learner_call(learner: Any, method: str, args: tuple, timeout: float) -> Any:
    return learner_result(learner_submit(learner, method, args), method, timeout)


def summarize(blobs: Sequence[bytes]) -> tuple[str, int, int]:
    """``(sync checksum, total bytes, bucket count)`` of a list of buckets (reads headers only)."""
    from selfplay.sync.buckets import sync_digest

    return sync_digest(blobs), sum(len(b) for b in blobs), len(blobs)


@dataclass
class Exported:
    """The learner's buckets of one sync: local bytes, or rank 0's ObjectRef (never fetched by the driver)."""

    blobs: list[bytes] | None
    ref: Any
    checksum: str
    bytes: int
    count: int


def export(learner: Any, bucket_mb: float, version: int, timeout: float) -> Exported:
    """Ask the learner side for its buckets. A remote export stays in the object store; its summary is
    computed by a small task next to the data instead of pulling it into the driver."""
    started = learner_submit(learner, "export_weights", (bucket_mb, version))
    if isinstance(started, _Done):
        blobs = list(started.value)
        return Exported(blobs, None, *summarize(blobs))
    ref = learner_result(started, "export_weights", timeout, fetch=False)
    checksum, nbytes, count = ray_get(_remote(summarize).remote(ref), "summarize(buckets)", timeout)
    return Exported(None, ref, checksum, nbytes, count)


_REMOTE: dict[Any, Any] = {}


def _remote(fn: Any) -> Any:
    """``fn`` as a zero-CPU Ray task (created once per process)."""
    if fn not in _REMOTE:
        import ray

        _REMOTE[fn] = ray.remote(num_cpus=0)(fn)
    return _REMOTE[fn]
