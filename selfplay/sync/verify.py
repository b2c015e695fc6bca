"""Verify a sync: every generator holds the right version and checksum, and computes the learner's log-probs.

After each sync the generators and the learner score the same probe batch (token sequences drawn with
a fixed seed) and the largest |log-prob difference| must stay within ``sync.probe_tolerance``. A
stale version, a checksum mismatch or a log-prob mismatch raises :class:`SyncError` naming the
generator, the version and the difference, so the run stops instead of generating with wrong weights
(a silently failed reload, a dtype mix-up, a wrong tensor mapping all show up here).

Random token sequences are used because they need no tokenizer or task and are drawn from the whole
vocabulary.

What the probe costs and what it still detects. It is a forward pass on the learner and on every
generator, so its cost grows with the tokens scored: the default is 2 sequences of 16 tokens (30 scored
positions; it was 4 x 32), scored by the learner in one batched forward, concurrently with the
generators' (which run concurrently with each other). It still detects everything it is there for,
because every scored position's log-prob depends on every layer's weights and, through the
log-softmax, on the whole output head: a reload that silently did not happen or reached only some
layers, a dtype or precision mix-up, weights loaded under the wrong names (swapped or transposed
projections), a stale packed copy (a tied head that kept the old embedding), a wrong positional
(rotary) setup, at positions up to 15 and through attention over up to 15 earlier tokens. What the
shorter probe touches less: input-embedding rows (at most 32 distinct tokens' rows are read, out of
the vocabulary; the 4 x 32 probe read at most 128). Those rows' bytes are covered by the checksum
either way; a fault in how an engine maps rows it is given (e.g. a vocabulary shard of a
tensor-parallel engine) shows as soon as one probe token falls in it, as it does for almost every
draw unless the fault concerns only a few rows. ``ProbeSpec(count=..., length=...)`` buys a wider probe.
"""

from __future__ import annotations

import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from selfplay.sync.base import GeneratorSide, LearnerHandle, SyncError, SyncReport


def probe_sequences(vocab_size: int, count: int = 4, length: int = 32, seed: int = 0) -> list[list[int]]:
    """``count`` seeded random token sequences of ``length`` tokens from ``[0, vocab_size)``."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(count)]


def check_versions(pool: GeneratorSide, version: int, checksum: str | None, timeout: float = 60.0) -> list[dict]:
    """Every generator reports ``version`` (and ``checksum`` when given); else :class:`SyncError`."""
    infos = pool.info(timeout)
    for name, info in zip(pool.names, infos):
        if info.get("version") != version:
            raise SyncError(f"{name} holds policy version {info.get('version')}, expected {version}")
        if checksum is not None and info.get("checksum") != checksum:
            raise SyncError(
                f"{name} at version {version} holds weights with checksum "
                f"{str(info.get('checksum'))[:12]}, the learner sent {checksum[:12]}"
            )
    return infos


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """Largest |a - b| over all positions (``inf`` on a shape mismatch or a NaN)."""
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        return math.inf
    worst = 0.0
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            d = abs(u - v)
            if math.isnan(d):
                return math.inf
            worst = max(worst, d)
    return worst


@dataclass(frozen=True)
class ProbeSpec:
    """The probe batch and the tolerance of a verified sync."""

    tolerance: float = 1e-3
    count: int = 2
    length: int = 16
    seed: int = 0


DEFAULT_PROBE = ProbeSpec()


class LearnerProbe:
    """The learner's side of the probe, scored on a thread of its own from the moment it is made.

    A sync makes one right after the export, so the learner scores its probe while the generators load
    (its weights do not change in between): the probe then costs the generators' forward, not both in a
    row. :class:`EarlyProbes` starts it on the vocabulary the generators reported at the previous sync.
    """

    def __init__(self, learner: LearnerHandle, vocab: int, spec: ProbeSpec, timeout: float):
        self.vocab = vocab
        self.sequences = probe_sequences(vocab, spec.count, spec.length, spec.seed)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="probe-learner")
        self._future = self._pool.submit(lambda: learner.probe_logps(self.sequences, timeout=timeout))

    def result(self) -> list[list[float]]:
        try:
            return self._future.result()
        finally:
            self._pool.shutdown(wait=False)


def verify_sync(
    learner: LearnerHandle, pool: GeneratorSide, version: int, checksum: str | None, spec: ProbeSpec,
    timeout: float = 300.0, early: EarlyProbes | None = None,
) -> float:
    """Check versions/checksums, then probe log-probs on every generator. Returns the largest difference.

    Raises :class:`SyncError` naming the first generator that is stale, holds other bytes, or computes
    log-probs further than ``spec.tolerance`` from the learner's. The learner scores the probe on a
    thread of its own while the generators score it (they are independent processes once remote), or
    already did (``early``: started before the generators loaded, used when its vocabulary still fits).
    """
    infos = check_versions(pool, version, checksum, timeout)
    vocab = min(int(info.get("vocab_size") or 2) for info in infos)
    learner_side = (early.take(vocab) if early is not None else None) or LearnerProbe(learner, vocab, spec, timeout)
    generated = pool.probe_logps(learner_side.sequences, timeout)
    expected = learner_side.result()
    worst = 0.0
    for name, got in zip(pool.names, generated):
        diff = max_abs_diff(expected, got)
        if not diff <= spec.tolerance:
            raise SyncError(
                f"{name} at version {version}: probe log-probs differ from the learner's by {diff:.3g} "
                f"(tolerance {spec.tolerance:g}); refusing to generate with these weights"
            )
        worst = max(worst, diff)
    return worst


def finish(
    report: SyncReport, learner: LearnerHandle, pool: GeneratorSide, spec: ProbeSpec | None, timeout: float,
    early: EarlyProbes | None = None,
) -> SyncReport:
    """The common end of every push: verify (when ``spec`` is given) and fill in the report."""
    if spec is None:
        return report
    start = time.perf_counter()
    report.max_diff = verify_sync(learner, pool, report.version, report.checksum, spec, timeout, early)
    report.verify_s = time.perf_counter() - start
    return report


class EarlyProbes:
    """The learner's probe of each sync, started right after the export (:class:`LearnerProbe`) on the
    vocabulary the generators reported the sync before. The first sync has none to go on: its learner
    probes after the load, as before, and :func:`verify_sync` records the vocabulary for the next."""

    def __init__(self) -> None:
        self.vocab: int | None = None
        self.pending: LearnerProbe | None = None

    def start(self, learner: LearnerHandle, spec: ProbeSpec | None, timeout: float) -> None:
        self.pending = LearnerProbe(learner, self.vocab, spec, timeout) if spec and self.vocab else None

    def take(self, vocab: int) -> LearnerProbe | None:
        """The started probe if it was drawn from ``vocab`` (the generators' now), else None."""
        probe, self.pending, self.vocab = self.pending, None, vocab
        if probe is not None and probe.vocab != vocab:
            probe.result()  # drawn from another vocabulary: drain it, the caller scores the right sequences
            return None
        return probe


def check_loaded(names: list[str], checksums: list[Any], expected: str, version: int) -> None:
    """Each generator's load answer (the checksum it loaded) must be the learner's; else :class:`SyncError`."""
    for name, got in zip(names, checksums):
        if got != expected:
            raise SyncError(
                f"{name} loaded version {version} with checksum {str(got)[:12]}, "
                f"the learner sent {expected[:12]}"
            )

