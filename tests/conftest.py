"""Shared fixtures. Tiers: pure math (no fixtures), tiny real models, real Ray/vLLM/DeepSpeed.

Heavy engines are imported inside fixtures so that collecting the pure tiers stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from selfplay.env import setup_env

# One torch thread in the test process: Ray actors and vLLM engines run beside it on 2 cores, and
# oversubscribed threads were measured 5-10x slower here. SELFPLAY_TEST_THREADS overrides it.
setup_env(threads=int(os.environ.get("SELFPLAY_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not any node named "gpu"
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread in this process while a module's tests run, restored after: a reference HF engine
    runs here beside the actors (2 threads on a shared 2-core machine were measured 30x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama policy with a character tokenizer, built offline (no hub)."""
    from selfplay.models import build_policy

    return build_policy(tmp_path_factory.mktemp("models") / "nano", preset="nano", tokenizer="char", seed=0)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray for the whole session (starting Ray costs ~6 s), set up as a run's embedded Ray is
    (loopback only, a token of this process's own; nothing written to ``~/.ray``)."""
    import ray

    from selfplay.env import embedded_ray_environment

    with embedded_ray_environment():
        if not ray.is_initialized():
            ray.init(
                num_cpus=4,
                include_dashboard=False,
                _temp_dir=str(tmp_path_factory.mktemp("ray")),
                log_to_driver=False,
            )
        yield ray
        ray.shutdown()


@pytest.fixture(scope="module")
def vllm_pool(ray_local, tiny_model_dir):
    """Two real vLLM generator actors on the nano policy (one pool per test module: tests change its weights)."""
    from actors.generator import GeneratorPool
    from selfplay.config.schema import GenerationConfig, ResourcesConfig

    cfg = GenerationConfig(backend="vllm", replicas=2, shard_size=3, max_model_len=256)
    pool = GeneratorPool(tiny_model_dir, cfg, ResourcesConfig(placement="spread"), dtype="float32",
                         start_timeout_s=300, shard_timeout_s=300, call_timeout_s=300)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """The uninterrupted micro run (``tests/e2e/micro_run.py``), watched while it ran; shared by the
    e2e contract, the loopback check and the driver-fault tests. Read it, never write into it."""
    from tests.e2e.micro_run import observed_micro_run

    run = observed_micro_run(tmp_path_factory.mktemp("micro"))
    assert run.returncode == 0, run.log[-4000:]
    return run
