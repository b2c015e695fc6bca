"""Kill points for crash tests: ``SELFPLAY_KILL_AT=<what>@<iteration>[:<count>][,<more>...]``.

What dies, and when (several comma-separated specs may be given):

* ``generate@1:1``: the driver, after the first generation shard of iteration 1 is stored;
* ``train@1:2``: the driver, once iteration 1's ``train_metrics.jsonl`` holds 2 optimizer steps (a watcher);
* ``sync@0``: the driver, during iteration 0's sync, after the generators loaded the new weights and
  before the manifest records the sync (:func:`kill_point`, called by the sync stage);
* ``generator@0:1``: one generator replica (a Ray kill; Ray restarts it), after the first shard of
  iteration 0 is stored; the driver carries on (the pool restores the replica, see ``actors.shard_run``);
* ``learner@0:2``: the highest learner rank (a Ray kill, no restart), once iteration 0's round logged
  2 steps; the train stage then fails cleanly and a rerun resumes the round from its checkpoint;
* ``hang@1``: one generator replica hangs in its next ``generate`` call, told so as iteration 1's
  generate stage starts (``GeneratorActor.inject_fault``). The pool's shard deadline is then
  ``HANG_DEADLINE_S`` instead of its default (half an hour), so the hang is noticed in test time: the
  replica is killed (Ray restarts it), the stage fails naming it, and a rerun resumes;
* ``write@1:2``: the driver, during its 2nd artifact write into ``iter_001/`` (``rundir.write_parquet``
  / ``write_json``): the temporary file is written, the rename onto the artifact's name is not done.

SIGKILL for the driver, not an exception: nothing in it gets to clean up, exactly like a node loss or an
OOM kill. Actors are found by their Ray names (``selfplay-generator-*``, ``selfplay-learner-*-rank<r>``).
Unset (the normal case), every function here is a no-op and imports nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ENV = "SELFPLAY_KILL_AT"
HANG_DEADLINE_S = 30.0  # the generator pool's shard deadline while a ``hang@`` fault is configured
_writes: dict[int, int] = {}  # artifact writes so far into each iteration's directory (``write@``)


def _target(what: str, k: int) -> int | None:
    """The count of the first spec naming ``what`` at iteration ``k``, else None."""
    for spec in os.environ.get(ENV, "").split(","):
        where, _, count = spec.strip().partition(":")
        name, _, it = where.partition("@")
        if name == what and it.isdigit() and int(it) == k:
            return int(count or 1)
    return None


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_actor(prefix: str, restart: bool) -> str:
    """Kill the last (by name) live Ray actor whose name starts with ``prefix``; returns its name."""
    import ray

    names = [n for n in ray.util.list_named_actors() if n.startswith(prefix)]
    if not names:
        raise RuntimeError(f"{ENV}: no live actor named {prefix}*")
    victim = max(names, key=_index)
    ray.kill(ray.get_actor(victim), no_restart=not restart)
    print(f"[{ENV}] killed {victim}", file=sys.stderr, flush=True)
    return victim


def _index(name: str) -> tuple[int, str]:
    """``selfplay-generator-<tag>-3`` -> 3, ``selfplay-learner-<tag>-rank1`` -> 1: the highest goes first."""
    tail = name.rsplit("-", 1)[-1].removeprefix("rank")
    return (int(tail) if tail.isdigit() else -1, name)


def kill_point(stage: str, k: int) -> None:
    """SIGKILL the driver here if ``stage@k`` is configured (for points no artifact marks, e.g. sync)."""
    if _target(stage, k) is not None:
        _kill()


def shard_hook(stage: str, k: int) -> Callable[[int], None] | None:
    """An ``on_shard`` callback that kills the driver (``generate@k:n``) or one generator replica
    (``generator@k:n``) after the configured number of stored shards."""
    driver, replica = _target(stage, k), _target("generator", k) if stage == "generate" else None
    if driver is None and replica is None:
        return None
    seen: list[int] = []

    def on_shard(index: int) -> None:
        seen.append(index)
        if replica is not None and len(seen) == replica:
            _kill_actor("selfplay-generator-", restart=True)
        if driver is not None and len(seen) >= driver:
            _kill()

    return on_shard


def watch_lines(stage: str, k: int, path: Path) -> None:
    """Once ``path`` has the configured number of lines (polled every 20 ms), kill the driver
    (``train@k:n``) or the highest learner rank (``learner@k:n``, for ``stage == "train"``)."""
    target, action = _target(stage, k), _kill
    if target is None and stage == "train" and _target("learner", k) is not None:
        target, action = _target("learner", k), lambda: _kill_actor("selfplay-learner-", restart=False)
    if target is None:
        return

    def watch() -> None:
        while True:
            if path.exists() and sum(1 for line in path.read_text().splitlines() if line.strip()) >= target:
                action()
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True, name="selfplay-kill-watch").start()


def hang_deadline(pool: object) -> None:
    """Shorten ``pool``'s shard deadline to ``HANG_DEADLINE_S`` when a ``hang@`` fault is configured."""
    if any(spec.strip().startswith("hang@") for spec in os.environ.get(ENV, "").split(",")):
        pool.shard_timeout_s = HANG_DEADLINE_S  # type: ignore[attr-defined]


def hang_point(stage: str, k: int) -> None:
    """Make the highest generator replica hang in its next ``generate`` call if ``hang@k`` is configured
    (``stage`` is where it is called from: only ``generate``)."""
    if stage != "generate" or _target("hang", k) is None:
        return
    import ray

    names = [n for n in ray.util.list_named_actors() if n.startswith("selfplay-generator-")]
    if not names:
        raise RuntimeError(f"{ENV}: no live actor named selfplay-generator-*")
    victim = max(names, key=_index)
    ray.get(ray.get_actor(victim).inject_fault.remote("generate", "hang"), timeout=120)
    print(f"[{ENV}] {victim} will hang in its next generate call", file=sys.stderr, flush=True)


def write_point(path: Path) -> None:
    """SIGKILL the driver in its n-th artifact write into ``iter_<k>/`` if ``write@k:n`` is configured;
    called once the temporary file is written, before it is renamed onto ``path``."""
    if ENV not in os.environ:
        return
    k = next((int(p[5:]) for p in Path(path).parts if p.startswith("iter_") and p[5:].isdigit()), None)
    target = None if k is None else _target("write", k)
    if target is None:
        return
    _writes[k] = _writes.get(k, 0) + 1
    if _writes[k] == target:
        print(f"[{ENV}] killed during the write of {path}", file=sys.stderr, flush=True)
        _kill()
