"""LoRA learners as two real Ray actor ranks in one DeepSpeed (gloo) world, on a nano Llama.

What the in-process tests (``test_lora.py``) cannot show: adapters trained and gathered under ZeRO-2/3
across ranks, the PEFT directory exported on the Ray path (its base named), and a LoRA round whose rank
is killed mid-way resumed bitwise by a new group from its checkpoint. The tier's shared group
(``learner_groups`` in ``conftest.py``) is rebuilt per test with ``reload``; the kill test ends it and a
later test gets a new one.
"""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import pair_accuracy, toy_pairs, weights

from selfplay.config.schema import TrainConfig

pytestmark = pytest.mark.slow

BASE = dict(learning_rate=2e-2, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant", epochs=2,
            lora={"r": 4, "alpha": 8.0})


@pytest.fixture
def group(learner_groups):
    return learner_groups()


def _logps(model, seq: list[int]) -> torch.Tensor:
    ids = torch.tensor([seq])
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]


@pytest.mark.parametrize("stage", [2, 3])
def test_w2_lora_round_changes_only_adapted_weights_by_rank_r(group, tiny_model_dir, tmp_path, stage):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from selfplay.train.lora import ADAPTER_DIR

    group.reload(tiny_model_dir, TrainConfig(**BASE, zero_stage=stage))
    before = weights(group.export_weights())
    pairs = group.compute_reference(toy_pairs(32))
    summary = group.train_round(pairs, timeout=300)
    assert summary["steps"] == 2 * 4  # 32 pairs / (4 per micro-batch x 2 ranks), 2 epochs
    assert summary["loss_last"] < 0.5 * summary["loss_first"]
    assert 0 < summary["trainable_params"] < summary["total_params"] / 10
    assert pair_accuracy(pairs, group.compute_reference(toy_pairs(32))) > 0.9

    after = weights(group.export_weights())  # merged: W + alpha/r B A, gathered across the ranks
    adapted = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for name, w in after.items():
        delta = (w - before[name]).double()
        if name.rsplit(".", 2)[-2] in adapted:
            assert 0 < torch.linalg.matrix_rank(delta, rtol=1e-4) <= 4, name  # a rank-r update, r = 4
        else:
            assert torch.equal(w, before[name]), name  # embeddings, norms, head: bitwise untouched

    out = group.save_hf(tmp_path / "policy")
    adapter_cfg = json.loads((tmp_path / "policy" / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_model_dir) and adapter_cfg["r"] == 4
    probe = [1, 5, 20, 30, 6, 40, 41, 2]
    ours = torch.tensor(group.probe_logps([probe])[0])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert torch.allclose(ours, _logps(merged, probe), atol=1e-5, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"], dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, tmp_path / "policy" / ADAPTER_DIR).eval()
    assert torch.allclose(ours, _logps(peft, probe), atol=1e-5, rtol=0)


def test_w2_warm_start_export_names_itself_as_the_adapters_base(group, tiny_model_dir, tmp_path):
    """The quick start's path: SFT warm start (every weight), export, then LoRA on that export."""
    from selfplay.config.schema import WarmStartConfig
    from selfplay.train.lora import ADAPTER_DIR

    group.reload(tiny_model_dir, TrainConfig(**BASE, zero_stage=3))
    rows = [{"prompt": r["prompt"], "reference": r["chosen"]} for r in toy_pairs(16).to_pylist()]
    warm = group.sft_round(rows, WarmStartConfig(examples=16, micro_batch_size=4, learning_rate=1e-2))
    assert warm["trainable_params"] == warm["total_params"]
    group.save_hf(tmp_path / "initial")
    adapter_cfg = json.loads((tmp_path / "initial" / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tmp_path / "initial")
    # iteration 0 (reference `previous`): its export's adapter applies to the warm-started policy
    summary = group.train_round(group.compute_reference(toy_pairs(16)), timeout=300)
    assert summary["trainable_params"] < summary["total_params"] / 10
    group.save_hf(tmp_path / "iter_000")
    adapter_cfg = json.loads((tmp_path / "iter_000" / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tmp_path / "initial")


def test_lora_rank_killed_midway_then_a_new_group_resumes_bitwise(group, tiny_model_dir, tmp_path):
    """Kills rank 1 at step 5 of 8 of a ZeRO-3 LoRA round; a new group loads the step-4 checkpoint (adapters
    and their AdamW state) and ends with the uninterrupted round's weights and losses, bit for bit. Then a
    rank of that group dies during a weight sync's export: the group is lost, and the error names the rank."""
    from actors.learner import LearnerGroup, LearnerGroupError

    cfg = TrainConfig(**{**BASE, "checkpoint_every": 2, "lr_schedule": "linear", "warmup_ratio": 0.2},
                      zero_stage=3)
    group.reload(tiny_model_dir, cfg)
    pairs = group.compute_reference(toy_pairs(32))
    full = group.train_round(pairs, timeout=300)
    expected = weights(group.export_weights())

    def crash_rank1_after_step5(record):  # defined here so Ray ships it by value to the actors
        import os

        import torch.distributed as dist

        if record["step"] == 5 and dist.get_rank() == 1:
            os._exit(1)

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
        # A rank that dies during a weight sync's export is the group's bookkeeping too: the group is lost.
        import ray

        from actors.learner import LearnerLostError

        ray.kill(fresh.actors[1])
        with pytest.raises(LearnerLostError, match=r"export_weights failed on rank 1: its actor died"):
            fresh.export(0.25, 8, timeout=120)
        assert fresh.lost is not None
    finally:
        fresh.shutdown()
    assert resumed["resumed_at_step"] == 4 and resumed["losses"] == full["losses"][4:]
    assert resumed["trainable_params"] == full["trainable_params"]
    assert set(got) == set(expected) and all(torch.equal(expected[k], got[k]) for k in expected)
