"""A task plug-in whose every answer is right: every prompt's samples tie at 1.0, so no pair can exist."""

from __future__ import annotations

from selfplay.tasks import ArithmeticTask


class SolvedTask(ArithmeticTask):
    def score(self, example, response: str) -> float:
        return 1.0
