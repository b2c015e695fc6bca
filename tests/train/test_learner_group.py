"""Two learner ranks as real Ray actors forming one DeepSpeed (gloo) world, on a nano Llama.

One group is started for the module (starting two actor processes that import torch, transformers and
DeepSpeed is the expensive part on 2 cores) and rebuilt per test with ``reload`` (new ZeRO stage, fresh
weights from the model directory).
"""

from __future__ import annotations

import pytest
import torch
from train_helpers import pair_accuracy, toy_pairs, weights

from selfplay.config.schema import ResourcesConfig, TrainConfig

pytestmark = pytest.mark.slow

BASE = dict(learning_rate=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant", epochs=3)


@pytest.fixture(scope="module")
def group(ray_local, tiny_model_dir, tmp_path_factory):
    from actors.learner import LearnerGroup

    resources = ResourcesConfig(learners=2, learner_cpus=1, threads_per_actor=1, placement="pack")
    g = LearnerGroup(tiny_model_dir, TrainConfig(**BASE), num_learners=2, resources=resources, run_seed=0,
                     output_dir=tmp_path_factory.mktemp("group_out"), setup_timeout_s=300)
    yield g
    g.shutdown()


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


def test_w2x1_equals_w1x2_after_one_step(group, tiny_model_dir):
    """The same global batch of 8 pairs: 2 ranks x 1 micro-batch vs 1 rank x 2 accumulated micro-batches."""
    common = {**BASE, "epochs": 1, "max_grad_norm": 1e9}
    group.reload(tiny_model_dir, TrainConfig(**common, gradient_accumulation_steps=1))
    pairs = group.compute_reference(toy_pairs(8))
    two_ranks = group.train_round(pairs, timeout=300)
    w2 = weights(group.export_weights())

    from actors.learner import LearnerGroup

    local = LearnerGroup(tiny_model_dir, TrainConfig(**common, gradient_accumulation_steps=2), local=True)
    try:
        one_rank = local.train_round(local.compute_reference(toy_pairs(8)))
        w1 = weights(local.export_weights())
    finally:
        local.shutdown()
    assert two_ranks["steps"] == one_rank["steps"] == 1
    assert two_ranks["loss_first"] == pytest.approx(one_rank["loss_first"], abs=1e-7)
    # Adam's first step is blind to a constant gradient scale, so check the averaged gradient's norm too.
    assert two_ranks["grad_norms"][0] == pytest.approx(one_rank["grad_norms"][0], rel=1e-6)
    # Float summation order differs between the layouts (allreduce vs accumulation): allow 1e-3 of lr.
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-6, rtol=0), (name, (w1[name] - w2[name]).abs().max())


def test_sync_side_addresses_the_ranks(group, tiny_model_dir):
    """A weight sync talks to the rank actors directly; rank 0's buckets stay in the object store."""
    from selfplay.sync.base import export, learner_call
    from selfplay.sync.buckets import sync_digest

    group.reload(tiny_model_dir, TrainConfig(**BASE, zero_stage=3))
    exported = export(group.sync_handle, bucket_mb=0.25, version=7, timeout=120)
    assert exported.blobs is None and exported.count > 1
    assert exported.checksum == sync_digest(group.export_weights(0.25, 7))
    probe = [[1, 5, 20, 30, 6, 40, 2]]
    assert learner_call(group.sync_handle, "probe_logps", (probe,), 120) == group.probe_logps(probe)


def test_rank_killed_midway_then_a_new_group_resumes_from_checkpoint(group, tiny_model_dir, tmp_path):
    """Runs last in this module: it kills one of the module group's actors."""
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
    finally:
        fresh.shutdown()
    assert resumed["resumed_at_step"] == 4 and resumed["losses"] == full["losses"][4:]
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # bitwise: deterministic on CPU/gloo

