"""Bring your own model and data, end to end: a Qwen2-architecture checkpoint built outside the presets
(tied embeddings, q/k/v biases, ChatML template, no bos) given as ``policy.path``, a jsonl of multi-turn
chat prompts as a ``dataset`` task and a user's judge, through the guide's recipe
(``docs/examples/chat_dataset.yaml``): generate (vLLM), judge, pairs, DPO on two ZeRO-3 ranks, export,
verified sync. The recipe is the one the docs show; only ``policy.path`` is set here.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from tests.e2e.conftest import ROOT, run_driver

pytestmark = pytest.mark.slow


def test_chat_dataset_recipe_on_a_qwen2_checkpoint(tmp_path):
    from selfplay.models.families import build_family

    model_dir = build_family(tmp_path / "qwen2-chat", "qwen2")
    recipe = yaml.safe_load((ROOT / "docs/examples/chat_dataset.yaml").read_text())
    recipe["policy"]["path"] = str(model_dir)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = run_driver(path, tmp_path / "run", timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]

    run = tmp_path / "run"
    entry = json.loads((run / "manifest.json").read_text())["iterations"]["0"]
    assert entry["complete"] is True
    assert entry["stages"]["sync"]["max_diff"] <= 1e-3
    gens = pq.read_table(run / "iter_000" / "generations.parquet").to_pylist()
    assert len(gens) == 16 * 4
    prompts = [json.loads(g["prompt"]) for g in gens]
    assert any(len(p) == 4 and p[2]["role"] == "assistant" for p in prompts)  # multi-turn prompts went through
    assert pq.read_table(run / "iter_000" / "pairs.parquet").num_rows > 0
    policy = run / "iter_000" / "policy"
    config = json.loads((policy / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is True
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy)
    rendered = tok.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n") and tok.bos_token is None
