"""The learner in-process (world size 1, real DeepSpeed on gloo, no Ray) on a nano Llama."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
import torch
from train_helpers import pair_accuracy, toy_pairs, weights

from selfplay.config.schema import LossConfig, TrainConfig, WarmStartConfig
from selfplay.train import Learner, NonFiniteError
from selfplay.train.family import family_for

BASE = dict(learning_rate=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant", epochs=2)


@pytest.fixture(scope="module")
def learner(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("learner_out")
    lrn = Learner(tiny_model_dir, TrainConfig(**BASE), output_dir=out, threads=1)
    yield lrn
    lrn.shutdown()


def test_dpo_round_metrics_and_hf_export_reproduce_logps(learner, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    learner.reload(tiny_model_dir, TrainConfig(**BASE))
    pairs = learner.compute_reference(toy_pairs(16))
    learner.set_metrics_dir(tmp_path / "iteration-0")
    summary = learner.train_round(pairs)
    assert summary["steps"] == 8 and summary["loss_last"] < summary["loss_first"]
    assert summary["reward_accuracy"] > 0.9

    lines = [json.loads(x) for x in (tmp_path / "iteration-0" / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9))
    record = lines[-1]
    for key in ("loss", "chosen_reward", "rejected_reward", "reward_accuracy", "reward_margin", "chosen_logps",
                "rejected_logps", "grad_norm", "lr", "tokens_per_s", "step", "epoch", "global_step"):
        assert key in record and record[key] == record[key], key  # present and not NaN
    assert record["step"] == 8 and record["epoch"] == 1
    # TensorBoard stays where the learner was started (its output_dir), one run over every round
    assert learner.metrics.tb_dir.parent != tmp_path / "iteration-0"
    assert list(learner.metrics.tb_dir.glob("events.out.tfevents.*"))

    out = learner.save_hf(tmp_path / "hf")
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert model.config.use_cache and model.config.architectures == ["LlamaForCausalLM"]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    probes = [tok("<s><u>12+35=<a>abab</s>", add_special_tokens=False)["input_ids"], [1, 5, 20, 30, 6, 40, 2]]
    ours = learner.probe_logps(probes)
    for seq, lp in zip(probes, ours):
        ids = torch.tensor([seq])
        with torch.no_grad():
            ref = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        assert len(lp) == len(seq) - 1
        assert torch.allclose(torch.tensor(lp), ref, atol=1e-4, rtol=0)
    # the sync buckets carry exactly the saved tensors
    exported = weights(learner.export_weights(bucket_mb=0.5, version=3))
    saved = model.state_dict()
    assert set(exported) == {k for k in saved if not k.endswith("inv_freq")}
    assert all(torch.equal(exported[k], saved[k]) for k in exported)


@pytest.mark.parametrize("stage", [0, 2])
def test_nonfinite_loss_stops_before_the_step_and_names_the_batch(learner, tiny_model_dir, stage):
    cfg = TrainConfig(**{**BASE, "zero_stage": stage})
    learner.reload(tiny_model_dir, cfg)
    pairs = learner.compute_reference(toy_pairs(8))
    bad = pairs.column("ref_chosen_logps").to_pylist()
    bad[5] = float("nan")
    pairs = pairs.set_column(pairs.column_names.index("ref_chosen_logps"), "ref_chosen_logps", pa.array(bad))
    good = [weights(learner.export_weights())]  # the weights after each applied step
    with pytest.raises(NonFiniteError, match=r"table rows \[.*\b5\b"):
        learner.train_round(pairs, on_step=lambda record: good.append(weights(learner.export_weights())))
    assert len(good) <= 2  # it stopped at the first step holding row 5 (epoch 0 has 2 steps)
    after = weights(learner.export_weights())
    assert all(torch.equal(good[-1][k], after[k]) for k in after)  # the last good weights are kept


def test_resume_after_fault_matches_uninterrupted_round(learner, tiny_model_dir, tmp_path):
    cfg = TrainConfig(**{**BASE, "checkpoint_every": 2, "lr_schedule": "cosine", "warmup_ratio": 0.25})
    learner.reload(tiny_model_dir, cfg)
    pairs = learner.compute_reference(toy_pairs(16))
    full = learner.train_round(pairs)
    expected = weights(learner.export_weights())

    def fault(record):
        if record["step"] == 5:
            raise RuntimeError("injected fault after step 5")

    learner.reload(tiny_model_dir, cfg)
    with pytest.raises(RuntimeError, match="injected fault"):
        learner.train_round(pairs, checkpoint_dir=tmp_path / "ckpt", on_step=fault)
    learner.reload(tiny_model_dir, cfg)  # a fresh start from the initial weights, as after a crash
    state = learner.load_checkpoint(tmp_path / "ckpt")
    assert state["round"]["position"] == 4  # the checkpoint after step 4 (every 2), not the failed step 5
    resumed = learner.train_round(pairs, checkpoint_dir=tmp_path / "ckpt")
    assert resumed["resumed_at_step"] == 4 and resumed["steps_run"] == full["steps"] - 4
    assert resumed["losses"] == pytest.approx(full["losses"][4:], abs=0)
    got = weights(learner.export_weights())
    # Same data order, optimizer moments, LR position and RNG: bitwise equal on CPU.
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("loss", [
    LossConfig(type="kto"),
    LossConfig(type="tdpo", params={"variant": 2}),
    LossConfig(type="orpo"),
    LossConfig(type="ipo"),
    LossConfig(type="simpo"),
])
def test_other_losses_learn_the_toy_preference(learner, tiny_model_dir, loss):
    cfg = TrainConfig(**BASE, loss=loss)
    learner.reload(tiny_model_dir, cfg)
    pairs = learner.compute_reference(toy_pairs(16))
    if not family_for(loss).needs_reference:
        assert "ref_chosen_logps" not in pairs.column_names
    if loss.type == "tdpo":  # as in a restarted process: the frozen reference is rebuilt from the weights held
        learner.reload(tiny_model_dir, cfg)
    summary = learner.train_round(pairs)
    half = len(summary["losses"]) // 2
    assert sum(summary["losses"][half:]) < sum(summary["losses"][:half])
    if family_for(loss).needs_reference:  # the trained policy prefers every chosen answer more than the reference did
        assert pair_accuracy(pairs, learner.compute_reference(toy_pairs(16))) >= 0.9
    else:
        assert summary["reward_accuracy"] >= 0.9


@pytest.mark.parametrize("variant", [
    dict(precision="bf16", zero_stage=1),
    dict(precision="bf16", zero_stage=3),
    dict(zero_stage=2, optimizer_offload=True),
    dict(zero_stage=0, gradient_checkpointing=True),
])
def test_precision_offload_and_checkpointing_variants(learner, tiny_model_dir, variant):
    learner.reload(tiny_model_dir, TrainConfig(**BASE, **variant))
    summary = learner.train_round(learner.compute_reference(toy_pairs(16)))
    assert summary["loss_last"] < 0.5 * summary["loss_first"] and summary["reward_accuracy"] == 1.0
    exported = weights(learner.export_weights())
    want = torch.bfloat16 if variant.get("precision") == "bf16" else torch.float32
    assert {t.dtype for t in exported.values()} == {want}
    assert {t.dtype for t in weights(learner.export_weights(dtype="float32")).values()} == {torch.float32}


def test_reference_columns_are_required_and_checked(learner, tiny_model_dir):
    cfg = TrainConfig(**BASE)
    learner.reload(tiny_model_dir, cfg)
    with pytest.raises(ValueError, match="compute_reference"):
        learner.train_round(toy_pairs(4))
    pairs = learner.compute_reference(toy_pairs(4))
    other = TrainConfig(**{**BASE, "max_completion_length": 3})
    with pytest.raises(ValueError, match="max_completion_length"):
        learner.train_round(pairs, other)


def test_reference_from_another_model_dir_and_sft_warm_start(learner, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    learner.reload(tiny_model_dir, TrainConfig(**BASE))
    rows = toy_pairs(8)
    initial = learner.compute_reference(rows)
    # each row's reference log-prob is the plain HF model's summed completion log-prob of that row
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for i, row in enumerate(rows.to_pylist()):
        text = json.loads(row["prompt"])[0]["content"]
        prompt = tok(f"<s><u>{text}<a>", add_special_tokens=False)["input_ids"]
        for col in ("chosen", "rejected"):
            completion = tok(row[col] + "</s>", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            expected = float(logp[len(prompt) - 1 :].sum())
            assert initial.column(f"ref_{col}_logps")[i].as_py() == pytest.approx(expected, abs=1e-4)
    examples = [{"prompt": p, "reference": c} for p, c in zip(rows["prompt"].to_pylist(),
                                                               rows["chosen"].to_pylist())]
    sft = learner.sft_round(examples, WarmStartConfig(learning_rate=3e-3, micro_batch_size=4, epochs=3))
    assert sft["steps"] == 6 and sft["loss_last"] < 0.7 * sft["loss_first"]
    trained = learner.compute_reference(rows)
    assert pair_accuracy(initial, trained) == 1.0  # SFT on the chosen answers raised them over the rejected
    # the reference can come from a model directory instead of the learner's current weights
    again = learner.compute_reference(rows, model_path=tiny_model_dir)
    for col in ("ref_chosen_logps", "ref_rejected_logps"):
        a, b = initial.column(col).to_pylist(), again.column(col).to_pylist()
        assert all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(a, b))


def test_pair_weights_scale_each_pairs_share_of_the_loss(learner, tiny_model_dir):
    """The ``weight`` column in a real round of one step (8 pairs, one micro-batch). The step's loss is
    ``sum(weight * loss) / pairs``, every pair of the step counted in the denominator whatever its weight.
    Before the step policy = reference, so every pair's sigmoid loss is log 2, and the figures are written
    out: all weights 1 is no column at all; a weight of 0 removes the pair's term but not its place in the
    denominator (7/8 of the set without it); a weight of 2 is the pair twice over a denominator one
    smaller (9/8 of the set with it duplicated). Loss and whole gradient scale alike. Gradients are
    compared by their global norm (the step's weights are not: Adam's first step is about lr * sign(g),
    and float rounding flips the sign of a near-zero gradient)."""
    cfg = TrainConfig(**{**BASE, "epochs": 1, "micro_batch_size": 16, "max_grad_norm": 1e9})
    pairs = toy_pairs(8)

    def first_step(table):
        learner.reload(tiny_model_dir, cfg)
        summary = learner.train_round(learner.compute_reference(table))
        assert summary["steps"] == 1
        return summary["losses"][0], summary["grad_norms"][0]

    def weighted(w):
        return pairs.append_column("weight", pa.array(w, pa.float64()))

    loss, norm = first_step(pairs)
    assert loss == pytest.approx(math.log(2), abs=1e-6)
    ones = first_step(weighted([1.0] * 8))
    assert ones[0] == loss and ones[1] == pytest.approx(norm, rel=1e-6)

    zero = first_step(weighted([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    dropped = first_step(pa.Table.from_pylist([r for i, r in enumerate(pairs.to_pylist()) if i != 3]))
    assert zero[0] == pytest.approx(7 / 8 * math.log(2), abs=1e-6) and dropped[0] == pytest.approx(math.log(2))
    assert zero[1] == pytest.approx(7 / 8 * dropped[1], rel=1e-5)

    double = first_step(weighted([2.0] + [1.0] * 7))
    rows = pairs.to_pylist()
    twice = first_step(pa.Table.from_pylist([*rows, {**rows[0], "pair_id": 8}]))
    assert double[0] == pytest.approx(9 / 8 * math.log(2), abs=1e-6)
    assert twice[0] == pytest.approx(math.log(2), abs=1e-6)
    assert double[1] == pytest.approx(9 / 8 * twice[1], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 3])
def test_rmsprop_and_warmup_steps_under_deepspeed(learner, tiny_model_dir, tmp_path, zero_stage):
    """SPIN/SPPO/DPO's optimizer through the real DeepSpeed engine, with the DPO authors' warm-up in steps."""
    cfg = TrainConfig(**{**BASE, "learning_rate": 3e-4}, optimizer="rmsprop", warmup_steps=3, zero_stage=zero_stage)
    learner.reload(tiny_model_dir, cfg)
    assert isinstance(learner.optimizer, torch.optim.RMSprop)
    learner.set_metrics_dir(tmp_path)
    summary = learner.train_round(learner.compute_reference(toy_pairs(16)))
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "train_metrics.jsonl").read_text().splitlines()]
    assert lrs[:4] == pytest.approx([3e-4 * s / 4 for s in (1, 2, 3)] + [3e-4])  # (step + 1) / (3 + 1), then 1
    assert summary["loss_last"] < summary["loss_first"] and summary["reward_accuracy"] >= 0.9


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_sync_export_packs_from_the_parameters_below_zero3_and_keeps_its_bytes(learner, tiny_model_dir,
                                                                                zero_stage):
    """Below ZeRO-3 the export reads the parameters themselves (packing is the only copy); ZeRO-3 gathers
    are copies. Either way the buckets own their bytes: a later optimizer step does not change them."""
    from selfplay.train.engine import iter_full_params

    learner.reload(tiny_model_dir, TrainConfig(**BASE, zero_stage=zero_stage))
    params = dict(learner.engine.module.named_parameters())
    live = dict(iter_full_params(learner.engine, None, copy=False))
    assert live.keys() >= params.keys()
    shared = {n for n, p in params.items() if live[n].data_ptr() == p.data_ptr()}
    assert shared == (set(params) if zero_stage == 0 else set())
    assert all(torch.equal(live[n], t) for n, t in iter_full_params(learner.engine, None))
    assert not any(t.data_ptr() == params[n].data_ptr() for n, t in iter_full_params(learner.engine, None)
                   if n in params)  # the default still copies

    blobs = learner.export_weights(bucket_mb=0.5, version=1)
    exported = {k: v.clone() for k, v in weights(blobs).items()}
    assert all(torch.equal(exported[n], live[n]) for n in exported)
    learner.train_round(learner.compute_reference(toy_pairs(8)))
    assert all(torch.equal(t, exported[n]) for n, t in weights(blobs).items())  # unchanged by the step
    assert any(not torch.equal(t, exported[n]) for n, t in weights(learner.export_weights()).items())


def test_probe_logps_of_equal_lengths_share_a_forward_and_keep_their_order(learner, tiny_model_dir):
    learner.reload(tiny_model_dir, TrainConfig(**BASE))
    seqs = [[1, 5, 20, 30, 6, 40, 2], [1, 5, 12, 13, 2], [3, 4, 5, 6, 7, 8, 9], [9, 8, 7, 6, 5, 4, 3]]
    alone = [learner.probe_logps([s])[0] for s in seqs]
    together = learner.probe_logps(seqs)
    assert [len(x) for x in together] == [len(s) - 1 for s in seqs]
    assert max(abs(a - b) for x, y in zip(alone, together) for a, b in zip(x, y, strict=True)) <= 1e-5
