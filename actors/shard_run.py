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
  again. They propagate as :class:`~selfplay.sync.base.RemoteCallError` naming the generator and shard.
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
from selfplay.sync.base import RemoteCallError, ray_get

log = logging.getLogger(__name__)


@dataclass
class _Call:
    replica: int
    shard: Shard | None  # None: a restore of the replica
    deadline: float


def actor_died(exc: BaseException) -> bool:
    """True when a remote call failed because its actor's process is gone (not because the call raised)."""
    import ray

    cause = exc.__cause__ if isinstance(exc, RemoteCallError) else exc
    return isinstance(cause, ray.exceptions.RayActorError)


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
    queue: deque[Shard] = deque(todo)
    idle: deque[int] = deque(range(len(pool.actors)))
    running: dict[Any, _Call] = {}
    attempts: Counter[int] = Counter()
    restores: Counter[int] = Counter()
    results: dict[int, list[list[Completion]]] = {}
    by_replica: dict[str, list[int]] = {name: [] for name in pool.names}

    def lose(a: int, s: Shard, why: str) -> None:
        name = pool.names[a]
        if attempts[s.index] > pool.shard_retries:
            raise RemoteCallError(f"{name}.generate(shard {s.index}) failed {attempts[s.index]} times; last: {why}")
        if restores[a] > pool.max_restarts:
            raise RemoteCallError(f"{name} was lost {restores[a] + 1} times in one generate call; last: {why}")
        log.warning("%s lost shard %d (%s); it is queued again and %s restored to version %d",
                    name, s.index, why, name, version)
        queue.appendleft(s)
        restores[a] += 1
        running[pool.submit_restore(a, version)] = _Call(a, None, time.monotonic() + pool.start_timeout_s)

    while queue or running:
        while idle and queue:
            a, s = idle.popleft(), queue.popleft()
            attempts[s.index] += 1
            ref = pool.actors[a].generate.remote(list(prompts[s.start : s.stop]), sampling, s.start)
            running[ref] = _Call(a, s, time.monotonic() + pool.shard_timeout_s)
        ref = _next_ready(pool, running)
        call = running.pop(ref)
        a, s, name = call.replica, call.shard, pool.names[call.replica]
        if s is None:  # a restore finished: verified, the replica takes shards again
            try:
                pool.check_restored(a, ref, version)
            except RemoteCallError as exc:  # died again while restarting: Ray may still bring it back
                if not actor_died(exc) or restores[a] > pool.max_restarts:
                    raise
                restores[a] += 1
                running[pool.submit_restore(a, version)] = _Call(a, None, time.monotonic() + pool.start_timeout_s)
                continue
            idle.append(a)
            continue
        try:
            groups = ray_get(ref, f"{name}.generate(shard {s.index})", pool.call_timeout_s)
        except RemoteCallError as exc:
            if not actor_died(exc):
                raise
            lose(a, s, "its actor died")
            continue
        held = sorted({c.policy_version for g in groups for c in g})
        if held and held != [version]:
            lose(a, s, f"generated with version {held}, expected {version} (restarted while idle)")
            continue
        if shard_dir is not None:
            write_shard(shard_dir, s, groups)
        results[s.index] = groups
        by_replica[name].append(s.index)
        idle.append(a)
        if on_shard is not None:
            on_shard(s.index)
    facts = {
        "attempts": {i: n for i, n in sorted(attempts.items()) if n > 1},
        "by_replica": by_replica,
        "restored": sorted(pool.names[a] for a in restores),
    }
    return results, facts


def _next_ready(pool: Any, running: dict[Any, _Call]) -> Any:
    """The first call in flight to finish; past a call's deadline, kill its replica and raise naming it."""
    import ray

    while True:
        first = min(c.deadline for c in running.values())
        ready, _ = ray.wait(list(running), num_returns=1, timeout=max(0.0, first - time.monotonic()))
        if ready:
            return ready[0]
        late = [c for c in running.values() if c.deadline <= time.monotonic()]
        if late:
            c = late[0]
            what = (f"{pool.names[c.replica]}.generate(shard {c.shard.index})" if c.shard is not None
                    else f"{pool.names[c.replica]}.restore")
            limit = pool.shard_timeout_s if c.shard is not None else pool.start_timeout_s
            for hung in late:  # Ray restarts it; the next call on the pool restores it (heal)
                pool.kill_replica(hung.replica)
            raise RemoteCallError(f"{what} did not finish within {limit:.0f} s; {pool.names[c.replica]} was "
                                  "killed so Ray restarts it (raise the pool's shard_timeout_s if shards are "
                                  "just slow)")
