"""Fixtures of the generate tests: one torch thread here (``one_thread``), a two-replica vLLM pool on the
nano policy, and one child process that runs the tier's fresh-engine scenarios (``vllm_steps``)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
_OPEN: list = []  # the close() of what the tier's package fixtures started


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module(one_thread):
    """Every test module here runs with one torch thread (the shared ``one_thread`` fixture)."""


@pytest.fixture(scope="module")
def gen_pool(vllm_pool):
    return vllm_pool


@pytest.fixture(scope="package")
def vllm_child(tmp_path_factory):
    """The tier's vLLM child process (``vllm_steps.VLLMChild``): its imports are paid once for every scenario."""
    from vllm_steps import VLLMChild

    child = VLLMChild(tmp_path_factory.mktemp("vllm_child"))
    _OPEN.append(child.close)
    yield child
    child.close()


def pytest_runtest_teardown(item, nextitem):
    """``scope="package"`` lasts the whole session in a directory without ``__init__.py``: end what the
    tier's fixtures started once its last test has run (their own teardown then finds nothing to do)."""
    if _OPEN and (nextitem is None or HERE not in nextitem.path.parents):
        while _OPEN:
            _OPEN.pop()()
