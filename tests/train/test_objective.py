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


@pytest.mark.parametrize("family", ["llama3", "qwen2", "gemma2", "phi3"])
@pytest.mark.parametrize("prompts", ["short", "long"])
def test_split_completion_forwards_match_full_sequences(family, prompts, tmp_path):
    """Chosen answers much shorter than the rejected samples (SPIN's shape) run one completion forward
    each on the shared prompt's cache; log-probs and gradients equal those of the K*B full sequences.

    With a prompt of ~300 tokens in the batch, Gemma-2 (a 128-token sliding window here) must not share
    the prompt at all: right padding would slide the short prompts out of their completions' window
    (that gave log-probs off by up to 3 nats before the check)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.models.families import build_family
    from selfplay.train.objective import ScoredByKey, sliding_window

    path = build_family(tmp_path / family, family)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    first = "Which is heaviest?" if prompts == "short" else " ".join(
        f"item {i} weighs {3 * i % 17} units," for i in range(25)) + " which is heaviest?"
    rows = [{"prompt": first, "chosen": "item 5",
             "rejected": "the heaviest one is the item that weighs the most units of all items listed above"},
            {"prompt": "sort 5,3,9,1", "chosen": "1,3,5,9", "rejected": "9, 5, 3 and then 1 after those, done"},
            {"prompt": "12+30=", "chosen": "42", "rejected": "forty two, or perhaps forty three, hard to say"}]
    data = encode_pairs(pa.Table.from_pylist(rows), tok, TrainConfig(max_length=1024, max_prompt_length=800))
    assert (max(len(p) for p in data.prompts) > 256) == (prompts == "long")
    windowed = family == "gemma2" and prompts == "long"
    assert (sliding_window(model) == 128) == (family == "gemma2")
    results = {}
    for shared in (False, True):
        model.zero_grad()
        scored = run_model(model, data, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id, torch.device("cpu"),
                           share_prefix=shared)
        assert isinstance(scored, ScoredByKey) == (shared and not windowed)
        logps, lengths = sequence_sums(scored)
        (logps * torch.arange(1.0, 7.0)).sum().backward()
        results[shared] = (logps.detach(), lengths, torch.cat([p.grad.flatten() for p in model.parameters()]))
    (lp0, len0, g0), (lp1, len1, g1) = results[False], results[True]
    assert torch.equal(len0, len1)
    assert lp1 == pytest.approx(lp0.tolist(), abs=2e-4)
    assert torch.allclose(g0, g1, atol=1e-4, rtol=1e-3)


def test_logits_are_computed_only_where_a_completion_token_is_scored(tiny_model_dir):
    """Both paths ask the model for the scored positions only (``logits_to_keep``), and a model without
    that argument gets its full logits cut to the same positions: the log-probs equal a plain forward's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "a much longer prompt, 123+456=", "chosen": "579", "rejected": "5"},
            {"prompt": "1+1=", "chosen": "2", "rejected": "11 or so"}]
    data = encode_pairs(pa.Table.from_pylist(rows), tok, TrainConfig())

    def plain(i: int, key: str) -> float:  # one unpadded sequence, every logit computed
        ids = torch.tensor([data.prompts[i] + data.completions[key][i]])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        return float(logp[len(data.prompts[i]) - 1:].sum())

    class NoKeep(torch.nn.Module):  # a causal LM whose forward does not declare logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids=None, attention_mask=None, use_cache=False, **kw):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kw)

    longest = max(len(p) + len(c) for p, cs in zip(data.prompts, zip(*data.completions.values())) for c in cs)
    with torch.no_grad():
        expected = [plain(i, key) for key in ("chosen", "rejected") for i in (0, 1)]
        for net in (model, NoKeep(model)):
            for shared in (False, True):
                scored = run_model(net, data, [0, 1], ("chosen", "rejected"), tok.pad_token_id, torch.device("cpu"),
                                   share_prefix=shared, split=False)
                assert scored.logits.shape[1] < longest  # the shorter prompt's first scored logit onwards
                assert sequence_sums(scored)[0].tolist() == pytest.approx(expected, abs=1e-4)
