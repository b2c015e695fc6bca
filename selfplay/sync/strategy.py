"""The push every weight sync runs; each sync method is a transfer strategy that only stages the weights.

Modelled on the split of a transfer strategy from the code that drives it: a method
(:mod:`~selfplay.sync.object_store`, :mod:`~selfplay.sync.filesystem`, :mod:`~selfplay.sync.nccl`) says
how one part of the learner's weights gets to where the generators can load it (:meth:`WeightSync.stage`),
and :meth:`WeightSync.push` is the same for all of them: stage each part, have the generator pool load it
(the pool calls its replicas, checks every one loaded the learner's bytes and records what they hold),
verify once at the end (:mod:`selfplay.sync.verify`). Neither side is told apart by kind: the learner is a
:class:`~selfplay.sync.base.LearnerHandle`, the generators a :class:`~selfplay.sync.base.GeneratorSide`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from selfplay.remote import RemoteCallError
from selfplay.sync.base import GeneratorSide, LearnerHandle, Load, Part, Staged, SyncError, SyncReport, combine
from selfplay.sync.verify import EarlyProbes, finish


class WeightSync:
    """A transfer strategy: :meth:`stage` is the method's own; :meth:`push` is the same for every method."""

    method = ""

    def __init__(self, bucket_mb: float, probe: Any, timeout_s: float):
        self.bucket_mb = bucket_mb
        self.probe = probe  # a ProbeSpec, or None: no verification
        self.timeout_s = timeout_s
        self.early = EarlyProbes()

    def stage(self, learner: LearnerHandle, pool: GeneratorSide, version: int, part: Part) -> Staged:
        """Export ``part`` from the learner and put it where the generators can load it."""
        raise NotImplementedError

    def check_parts(self, parts: Sequence[Part]) -> None:
        """Raise :class:`SyncError` for parts this method cannot carry."""

    def after_push(self) -> None:
        """What the method does once every part is loaded (the filesystem method prunes old versions)."""

    def push(self, learner: LearnerHandle, pool: GeneratorSide, version: int,
             parts: Sequence[Part] = ("policy",)) -> SyncReport:
        """Deliver ``parts`` of the learner's current weights to every generator as ``version``, through the
        pool (which records what its replicas now hold), then verify."""
        self.check_parts(parts)
        reports = [self._deliver(learner, pool, version, part, last=i == len(parts) - 1)
                   for i, part in enumerate(parts)]
        self.after_push()
        return finish(combine(reports), learner, pool, self.probe, self.timeout_s, self.early)

    def _deliver(self, learner: LearnerHandle, pool: GeneratorSide, version: int, part: Part, last: bool
                 ) -> SyncReport:
        """Stage one part and have the pool load it; that part's report (not yet verified)."""
        start = time.perf_counter()
        staged = self.stage(learner, pool, version, part)
        saved = learner.directory(part, timeout=self.timeout_s)
        if saved is not None:  # a directory the learner wrote: a restart reloads it, nothing stays in memory
            staged.restore = Load("load_adapter_dir" if part == "adapter" else "load_dir", saved)
        if last:
            self.early.start(learner, self.probe, self.timeout_s)  # the learner probes while the generators load
        try:
            pool.load(staged, version, self.timeout_s)  # checks each replica loaded the learner's bytes
        except SyncError:
            raise
        except (RemoteCallError, TimeoutError, RuntimeError) as exc:
            self.failed()
            raise SyncError(self.failure(version, staged, exc)) from exc
        checksum, nbytes, count = staged.summary
        transfer_s = time.perf_counter() - start - staged.export_s
        return SyncReport(self.method, version, count, nbytes, checksum, staged.export_s, transfer_s,
                          list(pool.names), parts=[part])

    def failed(self) -> None:
        """Forget state a failed load leaves unusable (the broadcast group)."""

    def failure(self, version: int, staged: Staged, exc: BaseException) -> str:
        what = "" if staged.part == "policy" else f" ({staged.part})"
        where = f" from {staged.where}" if staged.where else ""
        return f"sync to version {version}{what}{where} failed: {exc}"
