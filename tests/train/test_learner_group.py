"""Two learner ranks as real Ray actors forming one DeepSpeed (gloo) world, on a nano Llama.

The tier's shared group (``learner_groups`` in ``conftest.py``: starting two actor processes that import
torch, transformers and DeepSpeed is the expensive part on 2 cores) is rebuilt per test with ``reload``
(new ZeRO stage, fresh weights from the model directory). Every test starts with its own ``reload``, and
the rank-kill test ends the group and hands the tests after it the new group that resumed the round, so
any subset runs in any order (``-k``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import pair_accuracy, toy_pairs, weights

from selfplay.config.schema import TrainConfig

ray = pytest.importorskip("ray", reason="needs Ray (absent on the GPU machines: docs/gpu.md)")

pytestmark = pytest.mark.slow

BASE = dict(learning_rate=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant", epochs=3)


@pytest.fixture
def group(learner_groups):
    return learner_groups()


@pytest.mark.parametrize("stage", [2, 3])
def test_w2_dpo_round_learns_separable_pairs(group, tiny_model_dir, tmp_path, stage):
    cfg = TrainConfig(**BASE, zero_stage=stage)
    group.reload(tiny_model_dir, cfg)
    before = weights(group.export_weights())
    pairs = group.compute_reference(toy_pairs(32))
    summary = group.train_round(pairs, timeout=300)
    assert summary["steps"] == 3 * 4  # 32 pairs / (4 per micro-batch x 2 ranks), 3 epochs
    assert summary["loss_last"] < 0.5 * summary["loss_first"]
    after_logps = group.compute_reference(toy_pairs(32))  # the trained policy's log-probs
    assert pair_accuracy(pairs, after_logps) > 0.9
    after = weights(group.export_weights())
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    # the HF directory gathered from the shards reproduces the learner's log-probs
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(group.save_hf(tmp_path / "hf"), dtype=torch.float32).eval()
    probe = [1, 5, 20, 30, 6, 40, 41, 2]
    ids = torch.tensor([probe])
    with torch.no_grad():
        hf = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    assert torch.allclose(torch.tensor(group.probe_logps([probe])[0]), hf, atol=1e-4, rtol=0)


def test_zero0_and_zero3_give_the_same_losses(group, tiny_model_dir):
    losses, norms = {}, {}
    for stage in (0, 3):
        cfg = TrainConfig(**{**BASE, "epochs": 1, "micro_batch_size": 2}, zero_stage=stage)
        group.reload(tiny_model_dir, cfg)
        pairs = group.compute_reference(toy_pairs(20))
        summary = group.train_round(pairs, timeout=300)
        losses[stage], norms[stage] = summary["losses"], summary["grad_norms"]
    assert len(losses[0]) == 5
    # Same plan and math; ZeRO-3 only changes where parameters live and the order of float reductions.
    assert losses[3] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
    assert norms[3] == pytest.approx(norms[0], rel=1e-4)
    assert losses[0][-1] < losses[0][0]


@pytest.mark.parametrize("stage", [0, 3])
@pytest.mark.parametrize("n_pairs, accumulation", [(8, 1), (10, 1), (3, 1), (3, 2)])
def test_w2x1_equals_w1x2(group, tiny_model_dir, stage, n_pairs, accumulation):
    """The same global batches: 2 ranks x A micro-batches vs 1 rank x 2A accumulated micro-batches.

    8 pairs, A=1: one step of two micro-batches of 4. 10 pairs: two steps, of 3 + 3 and 2 + 2 pairs (steps of
    different sizes). 3 pairs: one step of 2 + 1 (the ranks' micro-batches differ, so each must be scaled
    by the step's pair count, not its own). 3 pairs, A=2: micro-batches 1, 1 | 1 and a weight-0 filler
    (fewer pairs than micro-batches); both layouts hold the same filler, so it is also checked against one
    rank with one micro-batch of all 3 pairs, where there is none: the filler must count for nothing.
    """
    common = {**BASE, "epochs": 1, "max_grad_norm": 1e9, "zero_stage": stage}
    group.reload(tiny_model_dir, TrainConfig(**common, gradient_accumulation_steps=accumulation))
    pairs = group.compute_reference(toy_pairs(n_pairs))
    two_ranks = group.train_round(pairs, timeout=300)
    w2 = weights(group.export_weights())

    from actors.learner import LocalLearner

    local = LocalLearner.start(tiny_model_dir, TrainConfig(**common, gradient_accumulation_steps=2 * accumulation))
    try:
        one_rank = local.train_round(local.compute_reference(toy_pairs(n_pairs)))
        w1 = weights(local.export_weights())
        if n_pairs < 2 * accumulation:  # fillers: compare with the filler-free plan as well
            local.reload(tiny_model_dir, TrainConfig(**common, gradient_accumulation_steps=1))
            plain = local.train_round(local.compute_reference(toy_pairs(n_pairs)))
            assert plain["steps"] == 1
            assert plain["losses"] == pytest.approx(two_ranks["losses"], abs=1e-6)
            assert plain["grad_norms"] == pytest.approx(two_ranks["grad_norms"], rel=1e-5)
    finally:
        local.shutdown()
    assert two_ranks["steps"] == one_rank["steps"] == -(-n_pairs // 8)
    assert two_ranks["losses"] == pytest.approx(one_rank["losses"], abs=1e-6)
    # Adam's first step is blind to a constant gradient scale, so check the averaged gradient's norm too.
    assert two_ranks["grad_norms"] == pytest.approx(one_rank["grad_norms"], rel=1e-5)
    # Float rounding differs between the layouts (allreduce vs accumulation, and the logits of each
    # micro-batch's own scored positions only), and Adam's first step divides the gradient by its own
    # magnitude, which lifts that noise on near-zero entries: allow 1% of lr (4.8e-6 measured at most).
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-5, rtol=0), (name, (w1[name] - w2[name]).abs().max())


def test_sync_side_goes_through_the_group(group, tiny_model_dir):
    """A weight sync asks the group (never its rank handles) for the export; rank 0's buckets stay in the
    object store, and their summary is rank 0's own."""
    from selfplay.sync.buckets import sync_digest

    group.reload(tiny_model_dir, TrainConfig(**BASE, zero_stage=3))
    exported = group.export(0.25, 7, timeout=120)
    assert exported.blobs is None and exported.count > 1
    assert exported.checksum == sync_digest(group.export_weights(0.25, 7))
    # stored as numpy arrays (out of band: a reader maps them instead of copying them out of the store)
    stored = ray.get(exported.ref, timeout=120)
    assert len(stored) == exported.count and all(isinstance(b, np.ndarray) and b.dtype == np.uint8 for b in stored)
    assert sync_digest(stored) == exported.checksum
    probe = [[1, 5, 20, 30, 6, 40, 2]]
    assert [len(x) for x in group.probe_logps(probe, timeout=120)] == [len(probe[0]) - 1]
    # where a restarted generator gets these weights again: the directory they were reloaded from, until they change
    assert group.directory("policy") == str(tiny_model_dir) and group.directory("adapter") is None


def test_rank_killed_midway_then_a_new_group_resumes_from_checkpoint(group, learner_groups, tiny_model_dir,
                                                                     tmp_path):
    """It kills one of the shared group's actors and ends the group; the new group that resumed the round
    serves the later tests (a rank dying during a sync's export is checked on the LoRA group's resumed
    group, ``test_lora_rank_killed_midway_then_a_new_group_resumes_bitwise``)."""
    from actors.learner import LearnerGroup, LearnerGroupError

    cfg = TrainConfig(**{**BASE, "epochs": 2, "checkpoint_every": 2, "lr_schedule": "linear",
                         "warmup_ratio": 0.2}, zero_stage=3)
    group.reload(tiny_model_dir, cfg)
    pairs = group.compute_reference(toy_pairs(32))
    full = group.train_round(pairs, timeout=300)
    expected = weights(group.export_weights())

    def crash_rank1_after_step5(record):  # defined here so Ray ships it by value to the actors
        import os

        import torch.distributed as dist

        if record["step"] == 5 and dist.get_rank() == 1:
            os._exit(1)  # the process dies as in a crash: no cleanup, no exception

    group.reload(tiny_model_dir, cfg)
    with pytest.raises(LearnerGroupError, match=r"train_round failed on rank \d.*(died|Connection|closed)"):
        group.train_round(pairs, checkpoint_dir=tmp_path / "ckpt", on_step=crash_rank1_after_step5, timeout=300)
    group.shutdown()

    fresh = LearnerGroup(tiny_model_dir, cfg, num_learners=2, resources=group.resources, run_seed=0,
                         setup_timeout_s=300)
    try:
        assert fresh.load_checkpoint(tmp_path / "ckpt")["round"]["position"] == 4
        resumed = fresh.train_round(pairs, checkpoint_dir=tmp_path / "ckpt", timeout=300)
        got = weights(fresh.export_weights())
    except BaseException:
        fresh.shutdown()
        raise
    learner_groups.adopt(fresh)  # healthy: the later tests reload it instead of starting a group
    assert resumed["resumed_at_step"] == 4 and resumed["losses"] == full["losses"][4:]
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # bitwise: deterministic on CPU/gloo

