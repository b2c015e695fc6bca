"""The learner's exported directory, loaded by a real vLLM engine (CPU build), reproduces the learner's
log-probs on a probe batch within 1e-4 (fp32)."""

from __future__ import annotations

import pytest
from train_helpers import assert_vllm_logps_match, toy_pairs

from selfplay.config.schema import TrainConfig
from selfplay.train import Learner


@pytest.mark.slow
def test_trained_export_loads_in_vllm_with_the_learners_logps(tiny_model_dir, tmp_path, vllm_child):
    cfg = TrainConfig(learning_rate=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant")
    learner = Learner(tiny_model_dir, cfg, threads=1)
    try:
        pairs = learner.compute_reference(toy_pairs(8))
        learner.train_round(pairs)  # weights differ from the initial directory's
        out = learner.save_hf(tmp_path / "policy")
        tok_ids = [[1, 5, 20, 30, 6, 40, 2], [1, 5, 12, 13, 14, 15, 16, 6, 17, 18, 2]]
        ours = learner.probe_logps(tok_ids)
    finally:
        learner.shutdown()
    assert_vllm_logps_match(vllm_child, out, tok_ids, ours, tmp_path)
