"""One sharded generate call over a generator pool, surviving replicas that die or go stale.

:meth:`actors.generator.GeneratorPool.generate` plans the shards; ``run_shards`` hands them out, one per
idle replica, and collects them as they finish. Choices:

* **A dead replica costs only its shard.** A call that fails because its actor died (``RayActorError``)
  puts that shard back at the front of the queue; the pool restores the replica (Ray has restarted it
  under ``max_restarts``: it reloads the pool's current policy, see ``GeneratorPool.restore``) and it
  rejoins when the restore is verified. Shards already collected are never generated again, and other
  replicas keep working meanwhile: the restore is one more call in flight, not a wait.
* **Stale results are refused.** Every completion carries the version of the weights that produced it;
  a shard whose versions differ from the call's (a replica restarted while idle, holding its start-up
  weights) is treated like a lost shard. Seeds depend on the prompt index only, so a shard generated
  again on any replica is the same records.
* **Bounded.** A shard is tried at most ``1 + shard_retries`` times and a replica restored at most
  ``max_restarts + 1`` times per call; then the error names the generator and the shard. Every call in
  flight has its own deadline (``shard_timeout_s``, or ``start_timeout_s`` for a restore): a hung
  replica is named with its method and shard, and is killed so that Ray restarts it (the next call
  restores it) instead of leaving the pool blocked behind it.
* Errors raised inside ``generate`` itself (a bad prompt, an engine bug) are not retried: they would fail
  again. They propagate as :class:`~selfplay.remote.RemoteCallError` naming the generator and shard.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from selfplay.generate import Completion, Sampling
from selfplay.generate.shards import Shard, write_shard
from selfplay.remote import RemoteCallError, first_ready, ray_get

log = logging.getLogger(__name__)


@dataclass
class _Call:
    replica: int
    shard: Shard | None  # None: a restore of the replica
    deadline: float


def run_shards(
    pool: Any,
    prompts: Sequence[Any],
    sampling: Sampling,
    todo: Sequence[Shard],
    version: int,
    shard_dir: Any = None,
    on_shard: Callable[[int], None] | None = None,
) -> tuple[dict[int, list[list[Completion]]], dict[str, Any]]:
    """Generate ``todo`` on ``pool``'s replicas; returns ``({shard index: groups}, facts about the run)``."""
    return _ShardRun(pool, prompts, sampling, todo, version, shard_dir, on_shard).run()


class _ShardRun:
    """One call's queue of shards, its replicas and calls in flight; one handler per event."""

    def __init__(self, pool: Any, prompts: Sequence[Any], sampling: Sampling, todo: Sequence[Shard], version: int,
                 shard_dir: Any, on_shard: Callable[[int], None] | None) -> None:
        self.pool, self.prompts, self.sampling, self.version = pool, prompts, sampling, version
        self.shard_dir, self.on_shard = shard_dir, on_shard
        self.queue: deque[Shard] = deque(todo)
        self.idle: deque[int] = deque(range(len(pool.actors)))
        self.running: dict[Any, _Call] = {}
        self.attempts: Counter[int] = Counter()
        self.restores: Counter[int] = Counter()
        self.results: dict[int, list[list[Completion]]] = {}
        self.by_replica: dict[str, list[int]] = {name: [] for name in pool.names}

    def run(self) -> tuple[dict[int, list[list[Completion]]], dict[str, Any]]:
        while self.queue or self.running:
            self.hand_out()
            ref = self.next_ready()
            call = self.running.pop(ref)
            if call.shard is None:
                self.restored(call.replica, ref)
            else:
                self.generated(call.replica, call.shard, ref)
        facts = {
            "attempts": {i: n for i, n in sorted(self.attempts.items()) if n > 1},
            "by_replica": self.by_replica,
            "restored": sorted(self.pool.names[a] for a in self.restores),
        }
        return self.results, facts

    def hand_out(self) -> None:
        """Give the next shard to each idle replica."""
        while self.idle and self.queue:
            a, s = self.idle.popleft(), self.queue.popleft()
            self.attempts[s.index] += 1
            ref = self.pool.actors[a].generate.remote(list(self.prompts[s.start : s.stop]), self.sampling, s.start)
            self.running[ref] = _Call(a, s, time.monotonic() + self.pool.shard_timeout_s)

    def restore(self, a: int) -> None:
        """Start restoring replica ``a`` (restarted by Ray) to the call's version: one more call in flight."""
        self.restores[a] += 1
        ref = self.pool.submit_restore(a, self.version)
        self.running[ref] = _Call(a, None, time.monotonic() + self.pool.start_timeout_s)

    def restored(self, a: int, ref: Any) -> None:
        """A restore finished: verified, the replica takes shards again."""
        try:
            self.pool.check_restored(a, ref, self.version)
        except RemoteCallError as exc:  # died again while restarting: Ray may still bring it back
            if not exc.actor_lost or self.restores[a] > self.pool.max_restarts:
                raise
            self.restore(a)
            return
        self.idle.append(a)

    def generated(self, a: int, s: Shard, ref: Any) -> None:
        """A shard's call finished: keep (and store) its groups, or queue it again if the replica was lost."""
        name = self.pool.names[a]
        try:
            groups = ray_get(ref, f"{name}.generate(shard {s.index})", self.pool.call_timeout_s)
        except RemoteCallError as exc:
            if not exc.actor_lost:
                raise
            self.lose(a, s, "its actor died")
            return
        held = sorted({c.policy_version for g in groups for c in g})
        if held and held != [self.version]:
            self.lose(a, s, f"generated with version {held}, expected {self.version} (restarted while idle)")
            return
        if self.shard_dir is not None:
            write_shard(self.shard_dir, s, groups)
        self.results[s.index] = groups
        self.by_replica[name].append(s.index)
        self.idle.append(a)
        if self.on_shard is not None:
            self.on_shard(s.index)

    def lose(self, a: int, s: Shard, why: str) -> None:
        """Replica ``a`` lost shard ``s``: the shard goes back to the front of the queue, the replica is restored."""
        name = self.pool.names[a]
        if self.attempts[s.index] > self.pool.shard_retries:
            raise RemoteCallError(f"{name}.generate(shard {s.index}) failed {self.attempts[s.index]} times; "
                                  f"last: {why}")
        if self.restores[a] > self.pool.max_restarts:
            raise RemoteCallError(f"{name} was lost {self.restores[a] + 1} times in one generate call; last: {why}")
        log.warning("%s lost shard %d (%s); it is queued again and %s restored to version %d",
                    name, s.index, why, name, self.version)
        self.queue.appendleft(s)
        self.restore(a)

    def next_ready(self) -> Any:
        """The first call in flight to finish; past a call's deadline, kill its replica and raise naming it."""
        pool = self.pool
        while True:
            first = min(c.deadline for c in self.running.values())
            ref = first_ready(list(self.running), first - time.monotonic())
            if ref is not None:
                return ref
            late = [c for c in self.running.values() if c.deadline <= time.monotonic()]
            if late:
                c = late[0]
                what = (f"{pool.names[c.replica]}.generate(shard {c.shard.index})" if c.shard is not None
                        else f"{pool.names[c.replica]}.restore")
                limit = pool.shard_timeout_s if c.shard is not None else pool.start_timeout_s
                for hung in late:  # Ray restarts it; the next call on the pool restores it (heal)
                    pool.kill_replica(hung.replica)
                raise RemoteCallError(f"{what} did not finish within {limit:.0f} s; {pool.names[c.replica]} was "
                                      "killed so Ray restarts it (raise the pool's shard_timeout_s if shards are "
                                      "just slow)", "timeout")
