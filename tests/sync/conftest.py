"""Fixtures of the sync tests: one torch thread here, and a two-replica vLLM pool on the nano policy."""

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
def sync_pool(ray_local, tiny_model_dir):
    from actors.generator import GeneratorPool
    from selfplay.config.schema import GenerationConfig, ResourcesConfig

    cfg = GenerationConfig(backend="vllm", replicas=2, shard_size=3, max_model_len=256)
    pool = GeneratorPool(tiny_model_dir, cfg, ResourcesConfig(placement="spread"), dtype="float32",
                         start_timeout_s=300, shard_timeout_s=300, call_timeout_s=300)
    yield pool
    pool.shutdown()
