"""Fixtures of the generate tests: one torch thread here (``one_thread``), a two-replica vLLM pool on the
nano policy, and one child process that runs the tier's fresh-engine scenarios (``vllm_steps``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tier_end import TierEnd, open_vllm_child

TIER = TierEnd(Path(__file__).parent)


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module(one_thread):
    """Every test module here runs with one torch thread (the shared ``one_thread`` fixture)."""


@pytest.fixture(scope="module")
def gen_pool(vllm_pool):
    return vllm_pool


@pytest.fixture(scope="package")
def vllm_child(tmp_path_factory):
    """The tier's vLLM child process (``vllm_steps.VLLMChild``): its imports are paid once for every scenario."""
    yield from open_vllm_child(tmp_path_factory, TIER)


def pytest_runtest_teardown(item, nextitem):
    TIER.after(nextitem)
