"""What every weight sync shares: the two sides' interfaces, the push every method runs, its report and error.

A sync moves the learner's weights (buckets from :mod:`selfplay.sync.buckets`) into every generator,
then (optionally) verifies them (:mod:`selfplay.sync.verify`). Each side is one typed interface, so the
sync has one path whatever runs where:

* :class:`LearnerHandle`, the learner side: ``export`` (its buckets, local or left in the object store),
  ``probe_logps``, ``directory`` (where the exported weights already are on disk) and the broadcast pair.
  Implemented in-process by :class:`~actors.learner.LocalLearner` and over Ray ranks by
  :class:`~actors.learner.LearnerGroup`. A sync never holds a group's rank handles: the group calls every
  rank (a ZeRO-3 gather is collective) and, when a rank dies or hangs meanwhile, marks itself lost.
* :class:`GeneratorSide`, the generators: the :class:`~actors.generator.GeneratorPool`, the one owner of
  what each replica holds. A sync never calls a generator itself: it hands the pool a :class:`Staged` part
  (which generator method loads it, from what, and where a restarted replica gets it again), and the pool
  loads it into every replica, checks each answered checksum and records what the replicas now hold.

A method (:mod:`~selfplay.sync.object_store`, :mod:`~selfplay.sync.filesystem`, :mod:`~selfplay.sync.nccl`)
is a *transfer strategy* (:class:`~selfplay.sync.strategy.WeightSync`): it exports one part and puts it
where the generators can load it; the push around it is the same for every method.

What a push carries is a sequence of *parts* (:data:`Part`), each exported and loaded as its own set of
buckets: ``policy`` (the learner's weights, LoRA adapters merged in; the default), or with LoRA and
``sync.lora: adapter`` ``adapter`` (the adapter tensors alone, served on the base the generators hold),
preceded by ``base`` (the base weights) when the generators' base is not the learner's, or the merged
``policy`` instead (:func:`lora_parts`).

Every remote call goes through :mod:`selfplay.remote` (timeouts, errors naming the actor and the
method): a hung transfer (TRL #6797) becomes an error, not a stalled run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Part = Literal["policy", "base", "adapter"]


def lora_parts(learner_base: str | None, generators_base: str | None, reference: str = "initial"
               ) -> tuple[Part, ...]:
    """The parts of an adapter-only sync: the adapter alone when the generators serve it on the learner's
    own base (the same directory). Else a full push: with ``reference: initial`` the base and the adapter
    on it (the base stays the learner's for the rest of the run); with ``previous`` the merged policy
    (the learner merges it into its base at the next round's start, so the generators then hold that
    base already and the next sync is the adapter alone)."""
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


def combine(reports: Sequence[SyncReport]) -> SyncReport:
    """One report for the parts of a push, in order: bytes, buckets and seconds add up; the checksum is the
    last part's (what the generators report holding once all parts are loaded)."""
    last = reports[-1]
    if len(reports) == 1:
        return last
    return SyncReport(last.method, last.version, sum(r.buckets for r in reports), sum(r.bytes for r in reports),
                      last.checksum, sum(r.export_s for r in reports), sum(r.transfer_s for r in reports),
                      last.generators, parts=[p for r in reports for p in r.parts])


def summarize(blobs: Sequence[bytes]) -> tuple[str, int, int]:
    """``(sync checksum, total bytes, bucket count)`` of a list of buckets (reads headers only)."""
    from selfplay.sync.buckets import bucket_nbytes, sync_digest

    return sync_digest(blobs), sum(bucket_nbytes(b) for b in blobs), len(blobs)


# ------------------------------------------------------------------------------- the learner side
@dataclass
class Exported:
    """The learner's buckets of one part: local bytes, or rank 0's ObjectRef (never fetched by the driver)."""

    blobs: list[Any] | None
    ref: Any
    checksum: str
    bytes: int
    count: int


class LearnerHandle(Protocol):
    """The learner as the sync, export and stage code call it: in-process or W Ray ranks, one interface.

    ``timeout`` bounds a remote call (an in-process learner ignores it). ``holds`` is where the learner's
    weights are on disk (a Hugging Face or checkpoint directory; None: unsaved)."""

    holds: str | None

    # --- the sync side
    def export(self, bucket_mb: float, version: int, part: Part = "policy", *,
               timeout: float | None = None) -> Exported: ...

    def probe_logps(self, sequences: list[list[int]], *, timeout: float | None = None) -> list[list[float]]: ...

    def directory(self, part: Part, *, timeout: float | None = None) -> str | None:
        """The directory holding exactly ``part`` of the current weights (a Hugging Face directory; a PEFT
        adapter directory for ``adapter``), else None: where a restarted generator can get them again."""
        ...

    def broadcast_join(self, host: str, port: int, world_size: int, rank: int, backend: str, timeout_s: float,
                       *, timeout: float | None = None) -> bool: ...

    def broadcast_send(self, bucket_mb: float, version: int, *,
                       timeout: float | None = None) -> tuple[str, int, int] | None: ...

    # --- the stages
    def lora_base(self, *, timeout: float | None = None) -> str | None: ...

    def reload(self, model_path: str | Path, cfg: Any = None, *, timeout: float | None = None) -> None: ...

    def train_round(self, pairs: Any, cfg: Any = None, *, checkpoint_dir: str | Path | None = None,
                    on_step: Any = None, final_checkpoint: bool = True, timeout: float | None = None
                    ) -> dict[str, Any]: ...

    def sft_round(self, examples: Any, cfg: Any = None, *, checkpoint_dir: str | Path | None = None,
                  on_step: Any = None, timeout: float | None = None) -> dict[str, Any]: ...

    def prescore(self, sequences: Any, cfg: Any = None) -> None: ...

    def compute_reference(self, pairs: Any, model_path: str | Path | None = None, cfg: Any = None, *,
                          as_reference: bool = True, only_rejected: bool = False, groups: Any = None,
                          timeout: float | None = None) -> Any: ...

    def export_weights(self, bucket_mb: float = 64.0, version: int = 0, dtype: str | None = None, *,
                       timeout: float | None = None) -> list[Any]: ...

    def save_hf(self, out_dir: str | Path, dtype: str | None = None, *, timeout: float | None = None) -> str: ...

    def save_checkpoint(self, ckpt_dir: str | Path, *, timeout: float | None = None) -> str: ...

    def load_checkpoint(self, ckpt_dir: str | Path, *, timeout: float | None = None) -> dict[str, Any]: ...

    def set_counters(self, rounds: int, global_step: int, *, timeout: float | None = None) -> None: ...

    def set_metrics_dir(self, out_dir: str | Path | None, *, timeout: float | None = None) -> None: ...

    def info(self, *, timeout: float | None = None) -> list[dict[str, Any]]: ...

    def shutdown(self) -> None: ...


# ---------------------------------------------------------------------------- the generator side
@dataclass(frozen=True)
class Load:
    """One generator-actor load call: ``method(source, version)`` (``load_buckets``, ``load_path``,
    ``load_dir``, ``load_adapter``, ``load_adapter_path``, ``load_adapter_dir``)."""

    method: str
    source: Any  # buckets or an ObjectRef to them, or a directory


@dataclass
class Staged:
    """One part of a push, ready for the pool to load into every replica.

    ``load`` is how every replica loads it now; ``restore`` how a replica Ray restarts gets it again (None:
    nowhere, e.g. a broadcast). A broadcast has no source: the pool submits ``load`` (no ``source``) on every
    replica, then calls ``send``, which returns the buckets' summary once the learner has sent them."""

    part: Part
    load: Load
    export_s: float
    summary: tuple[str, int, int] | None  # (checksum, bytes, buckets); None until ``send`` has run
    restore: Load | None = None
    send: Callable[[], tuple[str, int, int]] | None = None
    where: str = ""  # said in a failure's message (the directory a filesystem sync wrote)


class GeneratorSide(Protocol):
    """The generators as a sync sees them: the pool that loads every weight and records what it loaded."""

    names: list[str]

    def load(self, staged: Staged, version: int, timeout: float) -> list[str]:
        """Load ``staged`` into every replica as ``version``; the checksums they loaded, in replica order."""
        ...

    def join_broadcast(self, host: str, port: int, world_size: int, backend: str, timeout_s: float,
                       learner_join: Callable[[], Any]) -> None:
        """Every replica joins a broadcast group as ranks 1..R, with ``learner_join`` (rank 0) in between."""
        ...

    def info(self, timeout: float | None = None) -> list[dict[str, Any]]: ...

    def probe_logps(self, sequences: list[list[int]], timeout: float | None = None) -> list[list[list[float]]]: ...


_REMOTE: dict[Any, Any] = {}


def as_task(fn: Any) -> Any:
    """``fn`` as a zero-CPU Ray task (created once per process): work done next to the data it reads."""
    if fn not in _REMOTE:
        import ray

        _REMOTE[fn] = ray.remote(num_cpus=0)(fn)
    return _REMOTE[fn]
