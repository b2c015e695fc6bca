"""At step 0 the policy is its reference: every implicit reward must start at exactly 0.

Two ways it did not: the reference was scored with the prompt's KV cache shared while training (with
gradient checkpointing) ran full sequences, and the policy trained with dropout on while its reference
was scored in eval mode. One pair, so the reference batch and the training micro-batch have one shape.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from selfplay.config.schema import TrainConfig
from selfplay.train import Learner

BASE = dict(learning_rate=1e-3, micro_batch_size=1, warmup_ratio=0.0, lr_schedule="constant", epochs=1)
PAIR = [{"prompt": json.dumps([{"role": "user", "content": "What is 1234 + 4321? Think of the digits. " * 4}]),
         "chosen": "5555", "rejected": "5556 or thereabouts"}]


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    lrn = Learner(tiny_model_dir, TrainConfig(**BASE), threads=1)
    yield lrn
    lrn.shutdown()


def step0_rewards(learner: Learner, model_dir, cfg: TrainConfig) -> tuple[float, float]:
    learner.reload(model_dir, cfg)
    records: list[dict] = []
    learner.train_round(learner.compute_reference(pa.Table.from_pylist(PAIR)), on_step=records.append)
    return records[0]["chosen_reward"], records[0]["rejected_reward"]


def test_reference_uses_the_training_forward_with_gradient_checkpointing(learner, tiny_model_dir):
    cfg = TrainConfig(**BASE, gradient_checkpointing=True, precision="bf16")
    assert step0_rewards(learner, tiny_model_dir, cfg) == (0.0, 0.0)


@pytest.fixture(scope="module")
def dropout_model_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.attention_dropout = 0.5  # a checkpoint that trains with dropout (GPT-2, OPT, Phi do)
    out = tmp_path_factory.mktemp("dropout") / "model"
    model.save_pretrained(out)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (out / f.name).write_bytes(f.read_bytes())
    return out


def test_dropout_is_off_by_default_and_can_be_kept(learner, dropout_model_dir):
    assert step0_rewards(learner, dropout_model_dir, TrainConfig(**BASE)) == (0.0, 0.0)
    kept = step0_rewards(learner, dropout_model_dir, TrainConfig(**BASE, disable_dropout=False))
    assert kept != (0.0, 0.0)  # the setting keeps the checkpoint's dropout
