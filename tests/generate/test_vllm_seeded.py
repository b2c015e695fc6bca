"""Seeded sampling in the real vLLM CPU engine at realistic prompt lengths is reproducible.

512 chat prompts of 200-400 tokens, n=4: about 1.2M prompt tokens against a step budget of 4096, so
with chunked prefill on, vLLM would prefill most prompts in chunks, and with per-request seeds it
raised ``RuntimeError: CPU Generator does not use offset`` (see ``selfplay.generate.vllm_engine``).
The second call hits the prefix cache, so it is scheduled differently from the first: equal samples
mean they depend on each prompt's seed alone. A slice generated on its own (as one shard would be)
gives the same samples as in the full batch. Kept cheap: nano policy, 8 new tokens.
"""

from __future__ import annotations

import gc
import random

import pytest
import torch

from selfplay.generate import Sampling, encode_prompts
from selfplay.generate.vllm_engine import CPU_STEP_TOKENS, cpu_scheduler_kwargs

WORDS = ["the", "train", "left", "at", "nine", "and", "farmer", "counted", "apples", "while", "seven",
         "boxes", "of", "pears", "waited", "near", "a", "red", "barn", "where", "Maria", "kept", "notes"]


def chat_prompts(count: int, seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        target = rng.randint(200, 380)  # characters of the user turn; the template adds a few tokens
        words: list[str] = []
        while len(" ".join(words)) < target:
            words.append(rng.choice(WORDS))
        prompts.append([{"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": " ".join(words)[:target]}])
    return prompts


@pytest.fixture(scope="module")
def engine(tiny_model_dir, monkeypatch_module):
    from selfplay.generate.vllm_engine import VLLMEngine

    monkeypatch_module.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    set_threads = torch.set_num_threads  # the CPU worker replaces it process-wide; put it back after
    eng = VLLMEngine(tiny_model_dir, dtype="float32", max_model_len=512)
    yield eng
    del eng
    gc.collect()
    torch.set_num_threads = set_threads


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def tokens(groups) -> list[list[tuple[int, ...]]]:
    return [[c.token_ids for c in g] for g in groups]


@pytest.mark.slow
def test_seeded_long_prompts_twice_identical(engine):
    prompts = chat_prompts(512, seed=3)
    lengths = [len(x) for x in encode_prompts(engine.tokenizer, prompts)]
    assert min(lengths) >= 200 and max(lengths) <= 400, (min(lengths), max(lengths))
    assert sum(lengths) > 20 * CPU_STEP_TOKENS  # far more than one step holds: chunking would occur

    sampling = Sampling(n=4, temperature=1.0, max_tokens=8, seed=11)
    first = engine.generate(prompts, sampling)
    second = engine.generate(prompts, sampling)
    assert len(first) == 512 and all(len(g) == 4 for g in first)
    assert tokens(first) == tokens(second)
    # real sampling happened: most groups hold distinct samples, and the seed matters
    distinct = sum(len(set(g)) > 1 for g in tokens(first))
    assert distinct > 400, distinct
    other = engine.generate(prompts[:32], sampling.with_(seed=12))
    assert tokens(other) != tokens(first[:32])

    # a shard generated alone (global indices 100..139) gives the samples it had in the full batch
    part = engine.generate(prompts[100:140], sampling, first_index=100)
    assert tokens(part) == tokens(first[100:140])
    assert [c.prompt_index for g in part for c in g][:4] == [100] * 4


def test_cpu_scheduler_kwargs_leave_user_settings():
    assert cpu_scheduler_kwargs(512, {}) == {"enable_chunked_prefill": False,
                                             "max_num_batched_tokens": CPU_STEP_TOKENS}
    assert cpu_scheduler_kwargs(8192, {})["max_num_batched_tokens"] == 8192
    assert "max_num_batched_tokens" not in cpu_scheduler_kwargs(512, {"max_num_batched_tokens": 9000})
