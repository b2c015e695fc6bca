"""A built policy runs in a real vLLM engine (CPU build), and greedy vLLM == greedy HF, token for token.

The engine is in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, a few seconds to start). A random-init
model is enough for equality: both sides must pick the same argmax at every step, in fp32.
"""

from __future__ import annotations

import gc

import pytest
import torch

from selfplay.models import build_policy, load_policy

MESSAGES = [
    [{"role": "user", "content": "12+35="}],
    [{"role": "system", "content": "sort"}, {"role": "user", "content": "sort:5,3,9,1="}],
]
PLAIN = ["37+48=", "Hello world"]
MAX_NEW = 16


def hf_greedy(model, ids: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=MAX_NEW)
    return out[0, len(ids):].tolist()


def vllm_greedy(model_dir, prompts: list[str]) -> tuple[list[list[int]], list[list[int]], list[str]]:
    from vllm import LLM, SamplingParams

    set_threads = torch.set_num_threads  # the CPU worker replaces it process-wide; put it back after
    try:
        llm = LLM(model=str(model_dir), dtype="float32", enforce_eager=True, max_model_len=128)
        outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_NEW), use_tqdm=False)
        result = ([list(o.prompt_token_ids) for o in outs], [list(o.outputs[0].token_ids) for o in outs],
                  [o.outputs[0].text for o in outs])
        del llm
        gc.collect()
        return result
    finally:
        torch.set_num_threads = set_threads


@pytest.fixture(scope="module")
def bpe_model_dir(tmp_path_factory):
    return build_policy(tmp_path_factory.mktemp("models") / "nano-bpe", preset="nano", tokenizer="bpe",
                        bpe_vocab_size=512, seed=0)


@pytest.mark.parametrize("which", ["char", "bpe"])
def test_vllm_greedy_equals_hf_greedy(which, tiny_model_dir, bpe_model_dir, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model_dir = tiny_model_dir if which == "char" else bpe_model_dir
    model, tok = load_policy(model_dir)
    chats = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in MESSAGES]
    prompts = chats + PLAIN
    prompt_ids, vllm_ids, texts = vllm_greedy(model_dir, prompts)
    for prompt, p_ids, v_ids, text in zip(prompts, prompt_ids, vllm_ids, texts):
        assert p_ids == tok(prompt)["input_ids"]  # vLLM tokenizes exactly as HF does
        assert v_ids, prompt
        assert v_ids == hf_greedy(model, p_ids), prompt
        decoded = tok.decode(v_ids, skip_special_tokens=True)
        # vLLM's incremental detokenizer holds back incomplete UTF-8 (random byte-level BPE emits some)
        assert text == decoded or "\ufffd" in decoded
