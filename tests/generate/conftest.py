"""Fixtures of the generate tests: one torch thread here (``one_thread``), and a two-replica vLLM pool on the
nano policy."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module(one_thread):
    """Every test module here runs with one torch thread (the shared ``one_thread`` fixture)."""


@pytest.fixture(scope="module")
def gen_pool(vllm_pool):
    return vllm_pool
