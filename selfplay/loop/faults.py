"""Kill points for crash tests: ``SELFPLAY_KILL_AT=<stage>@<iteration>:<count>`` SIGKILLs the driver.

* ``generate@1:1``: after the first generation shard of iteration 1 is stored;
* ``train@1:2``: once iteration 1's ``train_metrics.jsonl`` holds 2 optimizer steps (a watcher thread).

SIGKILL, not an exception: nothing in the driver gets to clean up, exactly like a node loss or an
OOM kill. Unset (the normal case), every function here is a no-op.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

ENV = "SELFPLAY_KILL_AT"


def _target(stage: str, k: int) -> int | None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    where, _, count = spec.partition(":")
    name, _, it = where.partition("@")
    if name == stage and it.isdigit() and int(it) == k:
        return int(count or 1)
    return None


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def shard_hook(stage: str, k: int) -> Callable[[int], None] | None:
    """An ``on_shard`` callback that kills the driver after the configured number of shards."""
    target = _target(stage, k)
    if target is None:
        return None
    seen = []

    def on_shard(index: int) -> None:
        seen.append(index)
        if len(seen) >= target:
            _kill()

    return on_shard


def watch_lines(stage: str, k: int, path: Path) -> None:
    """Kill the driver once ``path`` has the configured number of lines (polled every 20 ms)."""
    target = _target(stage, k)
    if target is None:
        return

    def watch() -> None:
        while True:
            if path.exists() and sum(1 for line in path.read_text().splitlines() if line.strip()) >= target:
                _kill()
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True, name="selfplay-kill-watch").start()
