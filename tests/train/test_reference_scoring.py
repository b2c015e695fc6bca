"""The reference pass scores each distinct (prompt, completion) once, its prompt once for all of them.

Self-play pair tables repeat sequences: SPIN's reference answer is the chosen side of each of its
prompt's n pairs, ``all_pairs`` puts every sample into n-1 pairs. The values must be those of scoring
every pair on its own (up to the float rounding of other batch shapes), for fewer tokens through the
model; a table without repeats must give the very same numbers as before.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest
import torch

from selfplay.config.schema import TrainConfig
from selfplay.train.data import encode_pairs
from selfplay.train.reference import load_plain_model, score, score_unique

KEYS = ("chosen", "rejected")


def _chat(text: str) -> str:
    return json.dumps([{"role": "system", "content": "You sort numbers and explain nothing."},
                       {"role": "user", "content": text}])


def _prompt(rng: random.Random) -> str:
    numbers = " ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(30, 60)))
    return _chat(f"Sort these numbers in ascending order, separated by single spaces: {numbers}")


def _sample(rng: random.Random) -> str:
    return " ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(3, 12)))


def repeated_pairs(seed: int = 0) -> pa.Table:
    """5 SPIN prompts (one reference answer against 3 samples each, one sample drawn twice) and 3
    all_pairs prompts (4 samples, 6 pairs each): 33 pairs, which leave a remainder in every batch size."""
    rng = random.Random(seed)
    rows = []
    for _ in range(5):
        prompt, answer = _prompt(rng), _sample(rng)
        samples = [_sample(rng), _sample(rng)]
        rows += [{"prompt": prompt, "chosen": answer, "rejected": s} for s in (*samples, samples[0])]
    for _ in range(3):
        prompt, samples = _prompt(rng), [_sample(rng) for _ in range(4)]
        rows += [{"prompt": prompt, "chosen": a, "rejected": b} for i, a in enumerate(samples) for b in samples[i + 1:]]
    return pa.Table.from_pylist(rows)


def distinct_pairs(seed: int = 1) -> pa.Table:
    rng = random.Random(seed)
    return pa.Table.from_pylist([{"prompt": _prompt(rng), "chosen": _sample(rng), "rejected": _sample(rng)}
                                 for _ in range(13)])


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    return load_plain_model(str(tiny_model_dir), torch.float32, torch.device("cpu")), \
        AutoTokenizer.from_pretrained(tiny_model_dir)


def _scored(fn, model, data, batch_size=4, split=True) -> tuple[dict[str, np.ndarray], int]:
    tokens = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: tokens.append(kw["input_ids"].numel()),
                                           with_kwargs=True)
    try:
        values = fn(model, data, KEYS, 0, torch.device("cpu"), batch_size, True, split)
    finally:
        hook.remove()
    return values, sum(tokens)


@pytest.mark.parametrize("split", [True, False], ids=["split", "joint"])
def test_repeated_sequences_are_scored_once_with_the_same_values(model_and_tokenizer, split):
    model, tok = model_and_tokenizer
    data = encode_pairs(repeated_pairs(), tok, TrainConfig())
    assert len(data) == 33 and max(len(p) for p in data.prompts) > 150
    want, plain_tokens = _scored(score, model, data, split=split)
    got, unique_tokens = _scored(score_unique, model, data, split=split)
    for key in KEYS:
        assert got[key].shape == (33,)
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-4)
    assert unique_tokens < 0.6 * plain_tokens, (unique_tokens, plain_tokens)  # prompts and answers once


def test_pairs_without_repeats_give_the_same_numbers_as_before(model_and_tokenizer):
    model, tok = model_and_tokenizer
    data = encode_pairs(distinct_pairs(), tok, TrainConfig())
    want, plain_tokens = _scored(score, model, data, batch_size=4)
    got, unique_tokens = _scored(score_unique, model, data, batch_size=4)
    assert all(np.array_equal(got[k], want[k]) for k in KEYS) and unique_tokens == plain_tokens


def test_a_pair_whose_sides_are_equal_and_an_empty_table(model_and_tokenizer):
    model, tok = model_and_tokenizer
    table = pa.Table.from_pylist([{"prompt": _chat("Sort: 3 1 2"), "chosen": "1 2 3", "rejected": "1 2 3"},
                                  {"prompt": _chat("Sort: 9 8"), "chosen": "8 9", "rejected": "9 8"}])
    data = encode_pairs(table, tok, TrainConfig())
    got, _ = _scored(score_unique, model, data)
    want, _ = _scored(score, model, data)
    assert got["chosen"][0] == got["rejected"][0]
    np.testing.assert_allclose(got["rejected"], want["rejected"], rtol=1e-5, atol=1e-4)
    empty = encode_pairs(table.slice(0, 0), tok, TrainConfig())
    values, _ = _scored(score_unique, model, empty)
    assert all(values[k].shape == (0,) for k in KEYS)


# --- scored ahead: Learner.prescore, one group per generation shard, then compute_reference(groups=...)

def _groups_and_pairs(seed: int = 2) -> tuple[list[pa.Table], pa.Table]:
    """Two shards' sequences (SPIN: a reference answer and 3 samples per prompt; 5 + 2 prompts) and the
    pairs built from them, plus one pair from elsewhere (a mixed-in earlier pair) that no group holds."""
    from selfplay.records import SEQUENCES_SCHEMA

    rng = random.Random(seed)
    groups, pairs = [], []
    for prompts in (5, 2):
        rows = []
        for _ in range(prompts):
            prompt, answer, samples = _prompt(rng), _sample(rng), [_sample(rng) for _ in range(3)]
            rows += [{"prompt": prompt, "completion": c, "completion_token_ids": None} for c in (answer, *samples)]
            pairs += [{"prompt": prompt, "chosen": answer, "rejected": s} for s in samples]
        groups.append(pa.Table.from_pylist(rows, schema=SEQUENCES_SCHEMA))
    pairs.append({"prompt": _prompt(rng), "chosen": _sample(rng), "rejected": _sample(rng)})
    return groups, pa.Table.from_pylist(pairs)


def _columns(table: pa.Table) -> dict[str, list]:
    return {c: table.column(c).to_pylist() for c in ("ref_chosen_logps", "ref_rejected_logps")}


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    from selfplay.train import Learner

    lrn = Learner(tiny_model_dir, TrainConfig(micro_batch_size=4, learning_rate=1e-2, warmup_ratio=0.0,
                                              lr_schedule="constant"), threads=1)
    yield lrn
    lrn.shutdown()


def test_groups_scored_ahead_give_the_very_same_columns(learner, tiny_model_dir):
    from selfplay.records import pop_prescored

    learner.reload(tiny_model_dir)
    groups, pairs = _groups_and_pairs()
    fresh, count = pop_prescored(learner.compute_reference(pairs, groups=groups))  # a resumed run: none ahead
    assert count == "0/2"
    assert [learner.prescore(g) for g in groups] == [20, 8]
    ahead, count = pop_prescored(learner.compute_reference(pairs, groups=groups))
    assert count == "2/2"
    assert _columns(ahead) == _columns(fresh)  # bitwise: a group's numbers do not depend on when it ran
    plain = learner.compute_reference(pairs)
    for name, values in _columns(plain).items():
        np.testing.assert_allclose(_columns(ahead)[name], values, rtol=1e-5, atol=1e-4)
    assert pop_prescored(learner.compute_reference(pairs, groups=groups))[1] == "0/2"  # taken once only


def test_what_was_scored_ahead_is_dropped_when_the_weights_change(learner, tiny_model_dir):
    from selfplay.records import pop_prescored

    learner.reload(tiny_model_dir)
    groups, pairs = _groups_and_pairs()
    columns = learner.compute_reference(pairs)
    for g in groups:
        learner.prescore(g)
    learner.train_round(columns)  # the weights change: what the learner held was scored by the old ones
    after, count = pop_prescored(learner.compute_reference(pairs, groups=groups))
    assert count == "0/2"
    again, _ = pop_prescored(learner.compute_reference(pairs, groups=groups))
    assert _columns(after) == _columns(again)


def test_shards_are_scored_beside_generation_only_where_the_threads_fit(monkeypatch):
    import selfplay.config.cores as cores
    from selfplay.config import load_config
    from selfplay.loop.stages import room_beside_generation

    monkeypatch.setattr(cores, "machine_cores", lambda: 2)
    base = {"policy": {"preset": "nano"}, "task": {"type": "arithmetic"}, "judge": {"type": "sft"},
            "pairing": {"strategy": "reference"}, "generation": {"replicas": 1}}
    one = {**base, "resources": {"threads_per_actor": 1}}
    assert room_beside_generation(load_config(one))  # 1 learner + 1 generator, 1 thread each, 2 cores
    assert not room_beside_generation(load_config({**base, "resources": {"threads_per_actor": 2}}))
    assert room_beside_generation(load_config({**base, "resources": {"threads_per_actor": 2, "learner_gpus": 1}}))
