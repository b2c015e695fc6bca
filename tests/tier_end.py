"""Closing what a test tier's package-scoped fixtures started, once the tier's last test has run.

``scope="package"`` lasts the whole session in a directory without ``__init__.py``, so a tier's vLLM
child or learner group would otherwise live on (and hold memory and cores) while later tiers run. A
tier's conftest makes one ``TierEnd``, registers each such fixture's close with ``closing`` and calls
``after`` from its ``pytest_runtest_teardown`` hook; the fixtures' own teardown then finds nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class TierEnd:
    def __init__(self, here: Path) -> None:
        self.here = Path(here)
        self._open: list[Callable[[], Any]] = []

    def closing(self, close: Callable[[], Any]) -> None:
        self._open.append(close)

    def after(self, nextitem: Any) -> None:
        """Close everything registered when the next test is outside the tier (or there is none)."""
        if self._open and (nextitem is None or self.here not in nextitem.path.parents):
            while self._open:
                self._open.pop()()


def open_vllm_child(tmp_path_factory: Any, tier: TierEnd) -> Iterator[Any]:
    """The body of a tier's ``vllm_child`` fixture: one ``VLLMChild`` (tests/generate/vllm_steps.py) whose
    imports are paid once for every scenario of the tier."""
    from tests.generate.vllm_steps import VLLMChild

    child = VLLMChild(tmp_path_factory.mktemp("vllm_child"))
    tier.closing(child.close)
    yield child
    child.close()
