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

HERE = Path(__file__).parent
_OPEN: list = []  # the close() of what the tier's package fixtures started


@pytest.fixture(scope="package")
def learner_groups(ray_local, tiny_model_dir, tmp_path_factory):
    """``learner_groups()`` is the live 2-rank group (started on first use; see ``LearnerGroups``)."""
    groups = LearnerGroups(tiny_model_dir, TrainConfig(), lambda: tmp_path_factory.mktemp("group_out"))
    _OPEN.append(groups.shutdown)
    try:
        yield groups
    finally:
        groups.shutdown()


@pytest.fixture(scope="package")
def vllm_child(tmp_path_factory):
    """The tier's vLLM child process (``tests/generate/vllm_steps.py``): its imports are paid once."""
    from tests.generate.vllm_steps import VLLMChild

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
