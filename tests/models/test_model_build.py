"""Built policies are ordinary HF model directories: load, count, seed, atomic/idempotent writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfplay.models import PARAM_RANGES, PRESETS, build_policy, count_parameters, load_policy
from selfplay.models.presets import estimate_parameters, llama_config

EXPECTED_FILES = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                  "tokenizer_config.json", "chat_template.jinja", "selfplay_build.json"}


def test_nano_char_policy_loads_like_a_checkpoint(tiny_model_dir):
    assert EXPECTED_FILES.issubset(p.name for p in tiny_model_dir.iterdir())
    model, tok = load_policy(tiny_model_dir)
    cfg = model.config
    assert cfg.model_type == "llama" and not cfg.tie_word_embeddings
    assert cfg.vocab_size == len(tok) and cfg.max_position_embeddings == 512
    assert cfg.head_dim in (32, 64)
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 0)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    prompt = tok.apply_chat_template([{"role": "user", "content": "12+35="}], add_generation_prompt=True,
                                     tokenize=False)
    assert prompt == "<s><u>12+35=<a>"
    assert tok.decode(tok("37+48=85")["input_ids"]) == "37+48=85"
    lo, hi = PARAM_RANGES["nano"]
    assert lo <= count_parameters(model) == count_parameters(tiny_model_dir) <= hi
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_parameter_counts_in_range(preset):
    config = llama_config(preset, vocab_size=104, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    from transformers import LlamaForCausalLM

    with torch.device("meta"):  # no memory, no init: only shapes
        n = count_parameters(LlamaForCausalLM(config))
    assert n == estimate_parameters(preset, 104)
    lo, hi = PARAM_RANGES[preset]
    assert lo <= n <= hi, f"{preset}: {n:,} params not in [{lo:,}, {hi:,}]"


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        llama_config("huge", vocab_size=104, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def test_seeded_init_is_reproducible(tmp_path, tiny_model_dir):
    same = load_file(build_policy(tmp_path / "a", preset="nano", seed=0) / "model.safetensors")
    other = load_file(build_policy(tmp_path / "b", preset="nano", seed=1) / "model.safetensors")
    ref = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert not torch.equal(ref["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_build_is_idempotent_atomic_and_guarded(tmp_path):
    out = build_policy(tmp_path / "m", preset="nano")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert build_policy(tmp_path / "m", preset="nano") == out  # same build: reused untouched
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="not the same build"):
        build_policy(tmp_path / "m", preset="nano", seed=3)
    build_policy(tmp_path / "m", preset="nano", seed=3, overwrite=True)
    assert json.loads((out / "selfplay_build.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary directories left behind


def test_bpe_policy_from_corpus_in_bfloat16(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{i}+{i + 7}={2 * i + 7}" for i in range(300)), encoding="utf-8")
    out = build_policy(tmp_path / "bpe", preset="nano", tokenizer="bpe", corpus=corpus,
                       bpe_vocab_size=400, dtype="bfloat16")
    model, tok = load_policy(out)
    assert model.dtype == torch.bfloat16
    assert model.config.vocab_size == len(tok) <= 400
    assert tok.decode(tok("12+19=31")["input_ids"]) == "12+19=31"
    assert tok.apply_chat_template([{"role": "user", "content": "1+2="}], add_generation_prompt=True,
                                   tokenize=False) == "<s><u>1+2=<a>"


def test_load_policy_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_policy(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is not a Hugging Face model directory"):
        load_policy(tmp_path / "empty")
    with pytest.raises(ValueError, match="config.json is missing"):
        count_parameters(tmp_path / "empty")


def test_import_pulls_no_heavy_engine():
    heavy = ("ray", "vllm", "deepspeed", "torch", "transformers")
    code = (f"import sys, selfplay.models, selfplay.tasks, selfplay.plugins; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
