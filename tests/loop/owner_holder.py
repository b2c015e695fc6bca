"""A stand-in driver for the ownership tests: a real process that owns a run directory, as `selfplay run` does.

    python tests/loop/owner_holder.py RUN_DIR [--take-over] [--probe] [--go FILE]

Prints ``owned <token>`` (or ``refused <message>``) on one line. Then it holds the run until SIGTERM (a
clean exit: the run is released) or SIGKILL (a crash: the record is left). With ``--probe`` it writes
``RUN_DIR/probe.txt`` through :mod:`selfplay.atomic` every few milliseconds, as a driver writes artifacts;
losing the run ends it with exit status 3 and ``lost <message>``. ``--go FILE`` waits for FILE to exist
before trying (saying ``waiting`` first), so that several holders race for the run at the same moment.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from selfplay.atomic import write_text
from selfplay.loop.ownership import OwnershipError, OwnershipLostError, hold


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    go = Path(argv[argv.index("--go") + 1]) if "--go" in argv else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SystemExit: `hold` releases on the way out
    if go is not None:
        print("waiting", flush=True)
    while go is not None and not go.exists():
        time.sleep(0.002)
    try:
        with hold(run_dir, take_over="--take-over" in argv) as own:
            print(f"owned {own.record.token}", flush=True)
            n = 0
            while True:
                if "--probe" in argv:
                    n += 1
                    write_text(run_dir / "probe.txt", f"holder {os.getpid()} write {n}\n")
                time.sleep(0.01)
    except OwnershipLostError as exc:
        print(f"lost {exc}", flush=True)
        return 3
    except OwnershipError as exc:
        print(f"refused {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
