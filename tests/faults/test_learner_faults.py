"""A learner rank that hangs, and a non-finite loss, on a real one-rank learner group in Ray.

A hang must become an error naming the method and the rank within the call's timeout, and leave the
group marked lost (every later call fails at once, shutdown does not wait on the stuck rank). A NaN
must stop the round before its optimizer step, name the step and the table rows, and leave the group
usable with the last good weights.

The tests share one group while it stays usable (the NaN test leaves it so); a test that finds it lost or
shut down gets a new one, so any subset runs alone (``-k``).
"""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
import torch

from selfplay.config.schema import ResourcesConfig, TrainConfig
from tests.train.train_helpers import toy_pairs, weights

pytestmark = pytest.mark.slow

CFG = TrainConfig(learning_rate=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant", epochs=1)


@pytest.fixture(scope="module")
def groups(ray_local, tiny_model_dir):
    """The module's learner groups: the current one is reused until a test leaves it lost or shut down."""
    from actors.learner import LearnerGroup

    made: list = []

    def usable():
        if not made or made[-1].lost is not None or not made[-1].actors:
            made.append(LearnerGroup(tiny_model_dir, CFG, num_learners=1, resources=ResourcesConfig(learners=1),
                                     setup_timeout_s=300))
        return made[-1]

    yield usable
    for g in made:
        g.shutdown()


@pytest.fixture
def group(groups):
    return groups()


def test_nonfinite_loss_names_the_batch_and_keeps_the_group(group):
    from actors.learner import LearnerGroupError, LearnerLostError

    pairs = group.compute_reference(toy_pairs(8))
    before = weights(group.export_weights())
    column = pairs.schema.get_field_index("ref_rejected_logps")
    bad = pairs.set_column(column, "ref_rejected_logps", pa.array([float("inf")] * 8, pa.float64()))  # injected
    named = r"rank 0: NonFiniteError: .*step 1/2 .*table rows \[\d+, \d+, \d+, \d+\].*; step not applied"
    with pytest.raises(LearnerGroupError, match=named) as err:
        group.train_round(bad)
    assert not isinstance(err.value, LearnerLostError) and group.lost is None
    after = weights(group.export_weights())  # the group still answers, with the last good weights
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_hung_rank_is_named_in_time_and_the_group_is_marked_lost(group):
    from actors.learner import LearnerLostError

    pairs = group.compute_reference(toy_pairs(8))

    def hang(record):  # shipped by value to the actor
        import time

        time.sleep(3600)

    start = time.monotonic()
    with pytest.raises(LearnerLostError, match=r"LearnerGroup\.train_round: rank\(s\) \[0\] did not answer within 3s"):
        group.train_round(pairs, on_step=hang, timeout=3)
    assert time.monotonic() - start < 3 + 10
    with pytest.raises(LearnerLostError, match="unusable since"):
        group.probe_logps([[1, 2, 3]])
    start = time.monotonic()
    group.shutdown()  # kills the stuck rank instead of asking it to leave (60 s)
    assert time.monotonic() - start < 15 and not group.actors
