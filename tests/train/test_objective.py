"""The prefix-shared forward equals the plain concatenated forward (log-probs and gradients)."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from selfplay.config.schema import TrainConfig
from selfplay.train.data import encode_pairs
from selfplay.train.objective import run_model, sequence_sums


def test_shared_prompt_forward_matches_full_sequences(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in [
        ("1+1=", "2", "11 or so"), ("a much longer prompt, 123+456=", "579", "5"), ("[x]", "sorted", "no")]]
    data = encode_pairs(pa.Table.from_pylist(rows), tok, TrainConfig())
    results = {}
    for shared in (False, True):
        model.zero_grad()
        scored = run_model(model, data, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id, torch.device("cpu"),
                           share_prefix=shared)
        logps, lengths = sequence_sums(scored)
        (logps * torch.arange(1.0, 7.0)).sum().backward()  # distinct weights: every row's gradient counts
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[shared] = (logps.detach(), lengths, grads, scored.tokens)
    (lp0, len0, g0, tok0), (lp1, len1, g1, tok1) = results[False], results[True]
    assert torch.equal(len0, len1)
    assert lp1 == pytest.approx(lp0.tolist(), abs=1e-4)
    assert torch.allclose(g0, g1, atol=1e-4, rtol=1e-3)
    assert tok1.sum() < tok0.sum()  # the shared prompt ran once per example
