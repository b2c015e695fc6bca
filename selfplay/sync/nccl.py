"""Weight sync by bucketed broadcast in a process group of learner rank 0 and the generators (GPUs: NCCL).

Protocol, per sync, from rank 0 (the learner) to ranks 1..R (the generators): the bucket count (one
int64), the bucket sizes (int64[count]), then each bucket as one uint8 tensor: ``count + 2``
collectives however many parameters the model has (OpenRLHF broadcast one parameter at a time, #533).
Receivers hand the bytes to the engine's verified ``load_buckets``, exactly like the other methods, so
a corrupt transfer is caught by the same blake3 check.

Choices and limits:

* The group is separate from the learners' DeepSpeed world: its own ``TCPStore`` (hosted by the
  driver, port chosen by the OS) and a process-group object built directly (``ProcessGroupNCCL`` on
  GPUs; ``ProcessGroupGloo`` with ``backend="gloo"``, the same code on CPUs, which is how it is tested
  without GPUs). It is built on the first push and reused; a failed push discards it.
* Every collective waits at most ``timeout_s``; the driver's waits are bounded too, so a hung transfer
  (TRL #6797) becomes an error naming the generator instead of a stalled run.
* Buckets are staged through host memory (packed on CPU, copied to the GPU for the broadcast, back to
  host for verification). A zero-copy GPU path would skip the host round trips; it is not written yet.
  On CPU (gloo) the sender broadcasts a view of its bucket bytes and a receiver hands the received
  tensor's memory on as a numpy array: no copies besides the transfer itself.
* The learner side is a :class:`~selfplay.sync.base.LearnerHandle`: in-process, the driver is rank 0
  (``LocalLearner``); a learner group's rank 0 joins through its actor's :class:`BroadcastSenderMixin`.
  The pool joins its replicas and receives (``GeneratorPool.join_broadcast``/``load``).
* Nothing stays for a generator Ray restarts: the pool restores it from the learner's directory
  (``LearnerHandle.directory``), or refuses to guess.

NCCL needs one GPU per rank; the GPU test (``tests/sync/test_nccl_gpu.py``) was not run (see docs/gpu.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from selfplay.remote import RemoteCallError
from selfplay.sync.base import LearnerHandle, Load, Part, Staged, SyncError, summarize
from selfplay.sync.strategy import WeightSync
from selfplay.sync.verify import DEFAULT_PROBE, ProbeSpec

STORE_PREFIX = "selfplay-weight-sync"


class BroadcastEndpoint:
    """One rank of the sync group. Rank 0 sends buckets, the others receive them."""

    def __init__(
        self,
        host: str,
        port: int,
        world_size: int,
        rank: int,
        backend: str = "nccl",
        timeout_s: float = 300.0,
    ):
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(
            host, port, world_size, is_master=False, timeout=self.timeout, wait_for_workers=False
        )
        store = dist.PrefixStore(STORE_PREFIX, store)
        if backend == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = self.timeout
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, opts)
        elif backend == "gloo":
            self.device = torch.device("cpu")
            self.group = dist.ProcessGroupGloo(store, rank, world_size, self.timeout)
        else:
            raise ValueError(f"unknown broadcast backend {backend!r}; expected nccl or gloo")

    def _broadcast(self, tensor: Any, what: str) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        try:
            done = self.group.broadcast([tensor], opts).wait(self.timeout)
        except RuntimeError as exc:  # gloo reports a timeout or a vanished peer this way
            raise RuntimeError(f"rank {self.rank}: broadcast of {what} failed: {exc}") from exc
        if not done:
            raise TimeoutError(f"rank {self.rank}: broadcast of {what} timed out after {self.timeout}")

    def send(self, blobs: list[bytes]) -> None:
        if self.rank != 0:
            raise RuntimeError("only rank 0 (the learner) sends")
        self._broadcast(torch.tensor([len(blobs)], dtype=torch.int64, device=self.device), "bucket count")
        self._broadcast(torch.tensor([len(b) for b in blobs], dtype=torch.int64, device=self.device), "sizes")
        for i, blob in enumerate(blobs):
            self._broadcast(_byte_tensor(blob).to(self.device), f"bucket {i}")

    def receive(self) -> list[Any]:
        """The buckets of one sync as numpy ``uint8`` arrays (on CPU: the received memory itself)."""
        count = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._broadcast(count, "bucket count")
        sizes = torch.zeros(int(count.item()), dtype=torch.int64, device=self.device)
        self._broadcast(sizes, "sizes")
        blobs = []
        for i, size in enumerate(sizes.tolist()):
            buf = torch.empty(size, dtype=torch.uint8, device=self.device)
            self._broadcast(buf, f"bucket {i}")
            blobs.append(buf.cpu().numpy())
        return blobs


def _byte_tensor(blob: Any) -> Any:
    """A uint8 tensor over a bucket's memory without a copy (the root of a broadcast only reads it)."""
    if not len(blob):
        return torch.empty(0, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(blob, dtype=torch.uint8)


class BroadcastSenderMixin:
    """Add to a learner actor class (it must have ``export_weights``) to serve :class:`BroadcastSync`."""

    _selfplay_broadcast: BroadcastEndpoint | None = None

    def broadcast_join(
        self, host: str, port: int, world_size: int, rank: int, backend: str, timeout_s: float
    ) -> bool:
        self._selfplay_broadcast = BroadcastEndpoint(host, port, world_size, rank, backend, timeout_s)
        return True

    def broadcast_send(self, bucket_mb: float, version: int) -> tuple[str, int, int] | None:
        """Export (collective on every rank) and, on the rank that joined the group, broadcast."""
        blobs = self.export_weights(bucket_mb, version)
        if self._selfplay_broadcast is None or not blobs:
            return None
        self._selfplay_broadcast.send(blobs)
        return summarize(blobs)


class BroadcastSync(WeightSync):
    method = "nccl"

    def __init__(
        self,
        bucket_mb: float = 64.0,
        *,
        backend: str = "nccl",
        probe: ProbeSpec | None = DEFAULT_PROBE,
        timeout_s: float = 600.0,
    ):
        super().__init__(bucket_mb, probe, timeout_s)
        self.backend = backend
        self._store = None

    def check_parts(self, parts: Sequence[Part]) -> None:
        if tuple(parts) != ("policy",):
            raise SyncError(f"the nccl sync broadcasts merged weights only, not {list(parts)}; "
                            "use sync.lora: merged, or sync.method object_store or filesystem")

    def _join(self, learner: LearnerHandle, pool: Any) -> None:
        """Build the group: a store hosted here, every generator and learner rank 0 connected to it (gloo
        connects every rank at once, so the generators' joins are under way before the learner's)."""
        import ray
        host = ray.util.get_node_ip_address()
        world = 1 + len(pool.names)
        timeout = timedelta(seconds=self.timeout_s)
        self._store = dist.TCPStore(host, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        port = self._store.port
        pool.join_broadcast(host, port, world, self.backend, self.timeout_s,
                            lambda: learner.broadcast_join(host, port, world, 0, self.backend, self.timeout_s,
                                                           timeout=self.timeout_s))

    def stage(self, learner: LearnerHandle, pool: Any, version: int, part: Part) -> Staged:
        """Nothing moves yet: the pool starts every replica's receive, then ``send`` exports and broadcasts
        (export and transfer overlap, so all of it counts as transfer)."""
        if self._store is None:
            try:
                self._join(learner, pool)
            except (RemoteCallError, TimeoutError, RuntimeError) as exc:
                self.failed()
                raise SyncError(f"broadcast sync to version {version} failed: {exc}") from exc
        staged = Staged(part, Load("broadcast_receive", None), 0.0, None)

        def send() -> tuple[str, int, int]:
            staged.summary = learner.broadcast_send(self.bucket_mb, version, timeout=self.timeout_s)
            return staged.summary

        staged.send = send
        return staged

    def failed(self) -> None:
        self._store = None  # a failed collective leaves the group unusable

    def failure(self, version: int, staged: Staged, exc: BaseException) -> str:
        return f"broadcast sync to version {version} failed: {exc}"
