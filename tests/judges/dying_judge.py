"""A plug-in judge for the restart test: it logs every call and its process dies once, on call ``die_on``.

The death (``os._exit``) is the injected fault; the log lets the test count which prompts were judged.
"""

from __future__ import annotations

import os
from pathlib import Path


class DyingJudge:
    name = "dying"

    def __init__(self, log: str, die_on: int) -> None:
        self.log, self.die_on = Path(log), die_on

    def score(self, groups):
        with open(self.log, "a") as f:
            f.write(",".join(g.prompt_id for g in groups) + "\n")
        calls = len(self.log.read_text().splitlines())
        marker = self.log.with_suffix(".died")
        if calls == self.die_on and not marker.exists():
            marker.write_text("died")
            os._exit(1)
        return [[float(len(r)) for r in g.responses] for g in groups]
