"""Fixtures of the train tier: one 2-rank learner group on Ray for every module here that needs one, and
one vLLM child process for the tests that load an export into a real vLLM engine.

Starting two learner actors (each imports torch, transformers and DeepSpeed and joins a gloo world) is
the expensive part of the Ray tests in this tier; ``reload`` rebuilds the ranks' engines with another
config (ZeRO stage, loss, LoRA) in the same processes. So the algorithm matrix, the group tests and the
LoRA group tests share one group, and a test that ends it (a killed rank) leaves the next test a new
one, or the resumed group it adopted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import LearnerGroups

from selfplay.config.schema import TrainConfig
from tests.tier_end import TierEnd, open_vllm_child

TIER = TierEnd(Path(__file__).parent)


@pytest.fixture(scope="package")
def learner_groups(ray_local, tiny_model_dir, tmp_path_factory):
    """``learner_groups()`` is the live 2-rank group (started on first use; see ``LearnerGroups``)."""
    groups = LearnerGroups(tiny_model_dir, TrainConfig(), lambda: tmp_path_factory.mktemp("group_out"))
    TIER.closing(groups.shutdown)
    try:
        yield groups
    finally:
        groups.shutdown()


@pytest.fixture(scope="package")
def vllm_child(tmp_path_factory):
    """The tier's vLLM child process (``tests/generate/vllm_steps.py``): its imports are paid once."""
    yield from open_vllm_child(tmp_path_factory, TIER)


def pytest_runtest_teardown(item, nextitem):
    TIER.after(nextitem)
