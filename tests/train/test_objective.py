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


def test_nll_weight_adds_the_chosen_length_normalised_nll(tiny_model_dir):
    """Iterative RPO: loss(nll_weight=a) - loss(0) = a * sum over pairs of -log p(chosen) / |chosen|."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.config.schema import LossConfig
    from selfplay.train.batches import Micro
    from selfplay.train.objective import pair_objective

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "sort:3,1,2=", "chosen": "1,2,3", "rejected": "3,2"},
            {"prompt": "12+30=", "chosen": "42", "rejected": "4 or 5"}]
    data = encode_pairs(pa.Table.from_pylist(rows), tok, TrainConfig())
    micro = Micro((0, 1), (True, True))
    cpu = torch.device("cpu")
    with torch.no_grad():
        base, _ = pair_objective(model, data, micro, LossConfig(type="simpo"), tok.pad_token_id, cpu)
        rpo, _ = pair_objective(model, data, micro, LossConfig(type="simpo", nll_weight=0.5), tok.pad_token_id, cpu)
        logps, lengths = sequence_sums(run_model(model, data, [0, 1], ("chosen", "rejected"), tok.pad_token_id, cpu))
    chosen_nll = -(logps[:2] / lengths[:2]).sum()
    assert lengths[:2].tolist() == [len(tok("1,2,3", add_special_tokens=False)["input_ids"]) + 1,
                                    len(tok("42", add_special_tokens=False)["input_ids"]) + 1]  # + EOS
    assert float(rpo - base) == pytest.approx(0.5 * float(chosen_nll), rel=1e-5)
    assert float(chosen_nll) > 0


def test_nll_weight_is_refused_for_kto():
    from pydantic import ValidationError

    from selfplay.config.schema import LossConfig

    with pytest.raises(ValidationError, match="nll_weight: KTO has no chosen response"):
        LossConfig(type="kto", nll_weight=1.0)
