"""Pure data tier of the learner: tokenisation, masking, truncation, the batch plan, the LR schedule."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from selfplay.config.schema import TrainConfig
from selfplay.losses import next_token_targets
from selfplay.train.batches import collate, plan_epoch, plan_round, shard_indices
from selfplay.train.data import encode, encode_pairs, encode_sft, kl_partners, kto_view
from selfplay.train.schedule import lr_lambda


@pytest.fixture(scope="module")
def tok():
    from selfplay.models import build_tokenizer

    return build_tokenizer("char")


def _pairs(n=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a = int(rng.integers(0, 10 ** int(rng.integers(1, 4))))
        rows.append({"prompt": f"{a}+1=", "chosen": str(a + 1), "rejected": "no" * int(rng.integers(1, 4)),
                     "pair_id": i})
    return pa.Table.from_pylist(rows)


def test_prompts_are_encoded_like_the_generator_and_completions_end_with_eos(tok):
    from selfplay.generate.types import encode_prompts

    messages = [{"role": "user", "content": "12+35="}]
    table = pa.Table.from_pylist([
        {"prompt": json.dumps(messages), "chosen": "47", "rejected": "46"},  # as the driver's tables store chats
        {"prompt": "12+35=", "chosen": "47", "rejected": "46"},  # a plain-text prompt: no chat template
    ])
    data = encode_pairs(table, tok, TrainConfig())
    assert tok.decode(data.prompts[0]) == "<s><u>12+35=<a>"
    assert data.prompts == encode_prompts(tok, [messages, "12+35="])  # the ids the generator sampled from
    assert data.completions["chosen"][0] == [*tok("47", add_special_tokens=False)["input_ids"], tok.eos_token_id]
    # a chat-message list column works too
    listed = encode_pairs(pa.Table.from_pylist([{"prompt": messages, "chosen": "47", "rejected": "46"}]), tok,
                          TrainConfig())
    assert listed.prompts == data.prompts[:1]


def test_sampled_token_ids_are_used_as_is(tok):
    table = pa.Table.from_pylist([
        {"prompt": "1+1=", "chosen": "2", "rejected": "22", "chosen_token_ids": None,
         "rejected_token_ids": [14, 14, 14]},  # a sample cut at max_tokens: no eos, tokens as sampled
    ])
    data = encode_pairs(table, tok, TrainConfig())
    assert data.completions["rejected"][0] == [14, 14, 14]
    assert data.completions["chosen"][0][-1] == tok.eos_token_id  # a reference answer: text + eos


def test_collate_masks_prompt_and_padding(tok):
    data = encode_pairs(pa.Table.from_pylist([
        {"prompt": "1+1=", "chosen": "2", "rejected": "three"},
        {"prompt": "10+10=", "chosen": "20", "rejected": "x"},
    ]), tok, TrainConfig())
    batch = collate(data, [0, 1], tok.pad_token_id)
    ids, mask, attn = batch["input_ids"], batch["loss_mask"], batch["attention_mask"]
    assert ids.shape[0] == 4  # chosen rows, then rejected rows, in one batch
    for r, (i, key) in enumerate([(0, "chosen"), (1, "chosen"), (0, "rejected"), (1, "rejected")]):
        p, c = data.prompts[i], data.completions[key][i]
        assert mask[r].tolist() == [False] * len(p) + [True] * len(c) + [False] * (ids.shape[1] - len(p) - len(c))
        assert attn[r].sum() == len(p) + len(c)
        assert ids[r, len(p) + len(c):].eq(tok.pad_token_id).all()
    assert batch["lengths"].tolist() == [2, 3, 6, 2]  # completion tokens incl. eos
    # after the shift, the scored positions predict exactly the completion tokens
    labels, shifted = next_token_targets(ids, mask)
    assert labels[shifted].tolist() == [t for key in ("chosen", "rejected") for i in (0, 1)
                                        for t in data.completions[key][i]]


def test_truncate_and_drop_counts(tok):
    table = pa.Table.from_pylist([
        {"prompt": "short", "chosen": "ok", "rejected": "no"},
        {"prompt": "a very long prompt here", "chosen": "ok", "rejected": "no"},
        {"prompt": "short", "chosen": "a long completion", "rejected": "no"},
    ])
    kw = dict(max_prompt_length=12, max_completion_length=5)
    cut = encode(table, tok, ("chosen", "rejected"), truncation="truncate", **kw)
    assert cut.stats == {"examples": 3, "kept": 3, "dropped": 0, "truncated": 2}
    assert all(len(p) <= 12 for p in cut.prompts)
    # left-truncated to 12 tokens: the end of the rendered prompt (text, then the assistant marker) survives
    assert tok.decode(cut.prompts[1]) == "prompt here<a>"
    assert cut.completions["chosen"][2] == tok("a lon", add_special_tokens=False)["input_ids"]
    dropped = encode(table, tok, ("chosen", "rejected"), truncation="drop", **kw)
    assert dropped.stats == {"examples": 3, "kept": 1, "dropped": 2, "truncated": 0}
    assert dropped.rows.tolist() == [0]


def test_plan_is_deterministic_sharded_and_complete():
    lengths = np.random.default_rng(0).integers(5, 60, size=37)
    a = plan_epoch(lengths, 4, world_size=2, accumulation=2, seed=3, epoch=0)
    assert a == plan_epoch(lengths, 4, world_size=2, accumulation=2, seed=3, epoch=0)
    assert a != plan_epoch(lengths, 4, world_size=2, accumulation=2, seed=4, epoch=0)
    assert a != plan_epoch(lengths, 4, world_size=2, accumulation=2, seed=3, epoch=1)
    seen = [i for step in a for m in step.micros for i, r in zip(m.indices, m.real) if r]
    assert sorted(seen) == list(range(37))  # every example exactly once, nothing dropped
    for step in a:
        assert len(step.micros) == 4
        per_rank = [step.for_rank(r, 2) for r in range(2)]
        assert [len(x) for x in per_rank] == [2, 2]  # equal micro-batches per rank
        assert all(1 <= len(m.indices) <= 4 for m in step.micros)
    # the plan depends on world_size * accumulation only: W=1 x 2 and W=2 x 1 see the same steps
    assert plan_epoch(lengths, 4, 1, 2, 3, 0) == plan_epoch(lengths, 4, 2, 1, 3, 0)
    assert len(plan_round(lengths, 4, 2, 2, 3, epochs=3)) == 3 * len(a)


def test_plan_with_fewer_examples_than_micro_batches_pads_with_weight_zero():
    steps = plan_epoch(np.array([5, 7]), 8, world_size=2, accumulation=2, seed=0, epoch=0)
    assert len(steps) == 1 and len(steps[0].micros) == 4 and steps[0].count == 2
    assert sum(not r for m in steps[0].micros for r in m.real) == 2


def test_megabatch_grouping_sorts_within_windows_and_random_does_not_sort():
    from selfplay.train.batches import MEGABATCH

    rng = np.random.default_rng(2)
    lengths = rng.integers(4, 200, size=3 * MEGABATCH * 2 + 5)
    steps = plan_epoch(lengths, 2, 1, 1, seed=0, epoch=0, grouping="megabatch")
    seen = sorted(i for s in steps for m in s.micros for i in m.indices)
    assert seen == list(range(len(lengths)))  # a permutation: nothing dropped or repeated
    spread = [np.ptp(lengths[list(s.micros[0].indices)]) for s in steps]
    off = plan_epoch(lengths, 2, 1, 1, seed=0, epoch=0, grouping="random")
    spread_off = [np.ptp(lengths[list(s.micros[0].indices)]) for s in off]
    assert np.mean(spread) < 0.2 * np.mean(spread_off)  # sorted within windows: close lengths
    # a window is a random sample of the epoch: the first window's examples are not the shortest ones
    order = [i for s in plan_epoch(lengths, 2, 1, 1, 0, 0, "megabatch") for m in s.micros for i in m.indices]
    assert order != sorted(order, key=lambda i: lengths[i])
    with pytest.raises(ValueError, match="length_grouping"):
        plan_epoch(lengths, 2, 1, 1, 0, 0, grouping="bogus")


def test_length_bucketing_reduces_padding():
    rng = np.random.default_rng(1)
    lengths = rng.integers(4, 200, size=256)
    steps = plan_epoch(lengths, 8, 1, 1, seed=0, epoch=0)
    padded = sum(len(m.indices) * max(lengths[list(m.indices)]) for s in steps for m in s.micros)
    random_batches = rng.permutation(256).reshape(-1, 8)
    padded_random = sum(8 * lengths[b].max() for b in random_batches)
    assert padded < 0.7 * padded_random
    for s in steps:  # within a micro-batch, lengths are close
        m = s.micros[0]
        assert np.ptp(lengths[list(m.indices)]) < 40
    # but the order of steps is shuffled, not sorted by length
    firsts = [lengths[s.micros[0].indices[0]] for s in steps]
    assert firsts != sorted(firsts)


def test_shard_indices_equal_batch_counts():
    shards = [shard_indices(10, r, 3, 3) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]
    assert sorted(i for s in shards for b in s for i in b) == list(range(10))


def test_kto_view_and_kl_partners(tok):
    p = kl_partners(7, seed=0)
    assert sorted(p.tolist()) == list(range(7)) and all(p[i] != i for i in range(7))
    assert (p == kl_partners(7, seed=0)).all()
    data = encode_pairs(_pairs(4), tok, TrainConfig())
    kto = kto_view(data, seed=0)
    partner = kl_partners(4, 0)
    assert len(kto) == 8 and kto.columns["label"].tolist() == [1, 0] * 4
    assert kto.completions["completion"][2] == data.completions["chosen"][1]
    assert kto.completions["kl"][3] == data.completions["rejected"][partner[1]]
    assert kto.prompts[3] == data.prompts[1]


def test_sft_examples_use_reference_column(tok):
    data = encode_sft(pa.Table.from_pylist([{"prompt": "2+2=", "reference": "4"}]), tok, max_prompt_length=64,
                      max_completion_length=8)
    assert list(data.completions) == ["completion"]
    assert data.completions["completion"][0][-1] == tok.eos_token_id


def test_lr_schedules():
    cos = lr_lambda("cosine", 10, 0.2)
    assert [round(cos(s), 4) for s in (0, 1, 2)] == [0.3333, 0.6667, 1.0]
    assert cos(9) > 0 and cos(9) < cos(5) < cos(2)
    lin = lr_lambda("linear", 4, 0.0)
    assert [lin(s) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert {lr_lambda("constant", 5, 0.0)(s) for s in range(5)} == {1.0}
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_lambda("step", 5, 0.0)


def test_weights_and_offsets_columns(tok):
    table = _pairs(3).append_column("weight", pa.array([1.0, 0.5, 2.0])).append_column(
        "offset", pa.array([0.1, 0.2, 0.3]))
    data = encode_pairs(table, tok, TrainConfig())
    assert data.columns["weight"].tolist() == [1.0, 0.5, 2.0]
    assert torch.tensor(data.columns["offset"]).allclose(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
