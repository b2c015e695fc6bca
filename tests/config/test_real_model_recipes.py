"""The recipes for real small instruct models: warm start off, bf16, and prompts rendered with the
checkpoint's own chat template. The checkpoints are not here, so each recipe is pointed at a tiny
checkpoint of the same architecture and template shape (``selfplay.models.families``) and its task's
prompts are encoded the way the generators will encode them."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfplay.config import load_config
from selfplay.generate import encode_prompts
from selfplay.loop.factory import build_task_from_config
from selfplay.models.families import build_family

ROOT = Path(__file__).parents[2]
REAL = [("qwen2.5_1.5b_instruct.yaml", "qwen2", "<|im_start|>system\n"),
        ("llama3.2_1b_instruct.yaml", "llama3", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>")]


@pytest.mark.parametrize(("name", "family", "opening"), REAL, ids=[r[0] for r in REAL])
def test_real_model_recipe(tmp_path, name, family, opening):
    model_dir = build_family(tmp_path / family, family)
    cfg = load_config(ROOT / "recipes" / name, [f"policy.path={model_dir}"])
    assert cfg.policy.warmstart is None and cfg.policy.preset is None
    assert cfg.policy.dtype == "bfloat16" and cfg.train.precision == "bf16"
    assert cfg.task.type == "word_problems" and cfg.task.chat is True
    assert cfg.judge.type == "verifier"

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    task = build_task_from_config(cfg)
    examples = task.train_examples(64, seed=cfg.seed)
    ids = encode_prompts(tok, [e.prompt for e in examples])
    texts = [tok.decode(x) for x in ids]
    assert all(t.startswith(opening) for t in texts)  # the checkpoint's template, not the tiny models'
    longest = max(len(x) for x in ids)  # the tiny 512-token BPE splits finer than a real vocabulary
    assert longest <= cfg.train.max_prompt_length
    assert longest + cfg.generation.max_tokens <= cfg.generation.max_model_len
