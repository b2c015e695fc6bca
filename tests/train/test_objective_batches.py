"""The objectives at batch shapes the papers do not spell out: AOT's per-pair weights, KTO's step-wide z0
with single-row and filler micro-batches, and ODPO's offsets read from the pairs table."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from selfplay.config.schema import LossConfig, TrainConfig
from selfplay.train.batches import Micro
from selfplay.train.data import encode_pairs, kto_view
from selfplay.train.objective import kto_objective, kto_step_kl, pair_objective, run_model, sequence_sums

CPU = torch.device("cpu")
ROWS = [("12+7=", "19", "91"), ("3+30=", "33", "3"), ("the sum of 45 and 5 is ", "50", "fifty-five"),
        ("8+8=", "16", "61"), ("100+1=", "101", "1001")]


@pytest.fixture(scope="module")
def nano(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), \
        AutoTokenizer.from_pretrained(tiny_model_dir)


def _pairs(tok, model, weights=None, offsets=None, order=None):
    """Encoded pairs with reference columns from a perturbed copy of ``model`` (so margins are not 0)."""
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in ROWS]
    if weights is not None:
        rows = [{**r, "weight": w} for r, w in zip(rows, weights)]
    if offsets is not None:
        rows = [{**r, "offset": o} for r, o in zip(rows, offsets)]
    if order is not None:
        rows = [rows[i] for i in order]
    data = encode_pairs(pa.Table.from_pylist(rows), tok, TrainConfig())
    idx = list(range(len(rows)))
    with torch.no_grad():
        sums = sequence_sums(run_model(model, data, idx, ("chosen", "rejected"), tok.pad_token_id, CPU))[0]
    shift = torch.randn(2, len(ROWS), generator=torch.Generator().manual_seed(3), dtype=sums.dtype)
    if order is not None:  # each pair keeps its own shift
        shift = shift[:, order]
    shifted = sums + shift.reshape(-1)  # a reference that is not the policy
    rc, rr = shifted.chunk(2)
    data.columns["ref_chosen_logps"], data.columns["ref_rejected_logps"] = rc.double().numpy(), rr.double().numpy()
    return data


@pytest.mark.parametrize("loss", ["aot", "aot_unpaired"])
def test_aot_weighted_loss_does_not_depend_on_the_order_of_the_pairs(nano, loss):
    """AOT's entry i is a quantile, not pair i: applying pair i's weight to it made the order matter."""
    model, tok = nano
    weights = [1.0, 0.0, 2.0, 0.5, 1.0]
    cfg = LossConfig(type=loss)
    values = []
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        data = _pairs(tok, model, weights=weights, order=order)
        with torch.no_grad():
            loss_sum, stats = pair_objective(model, data, Micro(tuple(range(5)), (True,) * 5), cfg,
                                             tok.pad_token_id, CPU)
        values.append(float(loss_sum))
        assert float(stats["loss"]) == pytest.approx(float(loss_sum), rel=1e-6)
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_odpo_reads_the_offset_column_and_refuses_a_table_without_it(nano):
    model, tok = nano
    cfg = LossConfig(type="odpo", params={"alpha": 1.0})
    micro = Micro((0, 1, 2), (True,) * 3)
    with torch.no_grad():
        zero = pair_objective(model, _pairs(tok, model, offsets=[0.0] * 5), micro, cfg, tok.pad_token_id, CPU)[0]
        big = pair_objective(model, _pairs(tok, model, offsets=[2.0] * 5), micro, cfg, tok.pad_token_id, CPU)[0]
        dpo = pair_objective(model, _pairs(tok, model), micro, LossConfig(type="sigmoid"), tok.pad_token_id, CPU)[0]
    assert float(zero) == pytest.approx(float(dpo), rel=1e-6)  # offset 0 is DPO
    assert float(big) > float(zero)  # a larger offset asks for a larger margin
    with pytest.raises(ValueError, match="odpo' needs a per-pair offset.*no `offset` column"):
        pair_objective(model, _pairs(tok, model), micro, cfg, tok.pad_token_id, CPU)
    with pytest.raises(ValueError, match=r"table rows \[1\] have none"):
        pair_objective(model, _pairs(tok, model, offsets=[0.0, None, 0.0, 0.0, 0.0]), micro, cfg,
                       tok.pad_token_id, CPU)


def _kto_data(tok, model):
    pairs = _pairs(tok, model)
    rng = torch.Generator().manual_seed(5)
    pairs.columns["ref_kl_chosen_logps"] = pairs.columns["ref_chosen_logps"] + torch.randn(5, generator=rng).numpy()
    pairs.columns["ref_kl_rejected_logps"] = pairs.columns["ref_rejected_logps"] - 3.0
    return kto_view(pairs, seed=0)


def test_kto_single_row_and_filler_micro_batches_share_the_step_z0(nano):
    """Micro-batch 1 with filler micro-batches: each used to clamp its own one-row z0 (filler: crash)."""
    model, tok = nano
    data = _kto_data(tok, model)
    cfg = LossConfig(type="kto")
    whole = Micro(tuple(range(len(data))), (True,) * len(data))
    singles = tuple(Micro((i,), (True,)) for i in range(len(data))) + (Micro((0,), (False,)),) * 2
    with torch.no_grad():
        mean_whole = kto_step_kl(model, data, (whole,), tok.pad_token_id, CPU)
        mean_singles = kto_step_kl(model, data, singles, tok.pad_token_id, CPU)
        assert mean_singles == pytest.approx(mean_whole, rel=1e-6)
        one, stats_one = kto_objective(model, data, whole, cfg, tok.pad_token_id, CPU, mean_whole)
        parts = [kto_objective(model, data, m, cfg, tok.pad_token_id, CPU, mean_singles) for m in singles]
    assert sum(float(p[0]) for p in parts) == pytest.approx(float(one), rel=1e-5)
    assert float(parts[-1][0]) == 0.0 and float(parts[-1][1]["count"]) == 0.0  # the filler adds nothing
    assert float(stats_one["kl"]) / float(stats_one["count"]) == pytest.approx(max(mean_whole, 0.0), rel=1e-6)
    with torch.no_grad():  # the old way, a z0 per one-row micro-batch, gives another loss on this data
        own = [kto_objective(model, data, m, cfg, tok.pad_token_id, CPU,
                             kto_step_kl(model, data, (m,), tok.pad_token_id, CPU))[0] for m in singles[:-2]]
    assert sum(float(x) for x in own) != pytest.approx(float(one), rel=1e-3)
