"""Fixtures of the generate tests: one torch thread here, and a two-replica vLLM pool on the nano policy."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The reference HF engine runs in the test process: 1 thread (2 threads on a shared 2-core machine
    were measured 30x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gen_pool(vllm_pool):
    return vllm_pool
