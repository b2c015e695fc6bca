"""SDPO through the real learner on two model families' chat layouts (Llama-3 headers, Qwen2 ChatML).

The shipped social-agent sessions (docs/examples/multiturn_prefs.jsonl: histories of 2-4 messages,
turns of 10-30 words) are encoded with each family's template, scored over a 2-turn segment and
trained for one short round. The segment's chosen-minus-rejected margin must rise and each side must
score fewer tokens than its continuation holds (the user turn inside the segment is context).
"""

from __future__ import annotations

import math

import pytest
import torch

from selfplay.config.schema import LossConfig, TrainConfig
from selfplay.tasks.pairs import PairsTask

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_a_segment_level_round_on_multi_turn_sessions(family, tmp_path, one_thread):
    from actors.learner import LocalLearner
    from selfplay.models.families import build_family
    from selfplay.train.data import encode_pairs

    model_dir = build_family(tmp_path / family, family)
    cfg = TrainConfig(learning_rate=1e-3, lr_schedule="constant", warmup_ratio=0.0, epochs=1, micro_batch_size=4,
                      max_prompt_length=320, max_completion_length=320,
                      loss=LossConfig(type="sigmoid", beta=0.1, segment_turns=2))
    pairs = PairsTask("docs/examples/multiturn_prefs.jsonl", eval_fraction=0.0, segment_turns=2).pairs_table(0)
    pairs = pairs.slice(0, 12)
    group = LocalLearner.start(model_dir, cfg)
    try:
        data = encode_pairs(pairs, group.learner.tokenizer, cfg)
        assert data.stats["truncated"] == 0 and min(len(p) for p in data.prompts) > 40
        for key in ("chosen", "rejected"):
            assert all(0 < sum(m) < len(c) for m, c in zip(data.masks[key], data.completions[key]))

        def margins():
            scored = group.compute_reference(pairs, cfg=cfg)
            return torch.tensor(scored.column("ref_chosen_logps").to_pylist()) - torch.tensor(
                scored.column("ref_rejected_logps").to_pylist())

        before = margins()
        summary = group.train_round(group.compute_reference(pairs, cfg=cfg), cfg)
        assert summary["steps"] == 3 and all(math.isfinite(x) for x in summary["losses"])
        assert float((margins() - before).mean()) > 0
    finally:
        group.shutdown()
