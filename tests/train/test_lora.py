"""LoRA learners in-process (world size 1, real DeepSpeed on gloo, real PEFT) on a nano Llama."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from train_helpers import assert_vllm_logps_match, toy_pairs, weights

from selfplay.config.schema import LossConfig, TrainConfig
from selfplay.train import Learner
from selfplay.train.lora import ADAPTER_DIR, merge_stream
from selfplay.train.variant import LoraWeights

BASE = dict(learning_rate=2e-2, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant", epochs=2)
LORA = dict(r=4, alpha=8.0)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**BASE, "lora": LORA, **kw})


@pytest.fixture(scope="module")
def learner(tiny_model_dir, tmp_path_factory):
    lrn = Learner(tiny_model_dir, cfg(), output_dir=tmp_path_factory.mktemp("lora_out"), threads=1)
    yield lrn
    lrn.shutdown()


def _probes(tok) -> list[list[int]]:
    return [tok("<s><u>12+35=<a>abab</s>", add_special_tokens=False)["input_ids"], [1, 5, 20, 30, 6, 40, 2, 7]]


def _hf_logps(model, seqs: list[list[int]]) -> list[torch.Tensor]:
    out = []
    for seq in seqs:
        ids = torch.tensor([seq])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].float()
        out.append(torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0])
    return out


def test_schema_defaults_off_and_rejects_bad_settings():
    assert TrainConfig().lora.r == 0 and "down_proj" in TrainConfig().lora.target_modules
    with pytest.raises(ValidationError, match="lora.r"):
        TrainConfig(lora={"r": -1})
    with pytest.raises(ValidationError, match="more than once"):
        TrainConfig(lora={"r": 8, "target_modules": ["q_proj", "q_proj"]})
    with pytest.raises(ValidationError, match="lora.ranke"):
        TrainConfig(lora={"ranke": 8})
    with pytest.raises(ValidationError, match="tdpo"):
        TrainConfig(lora={"r": 8}, loss=LossConfig(type="tdpo"))


def test_merge_stream_hand_computed():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a = torch.tensor([[1.0, 0.0]])  # r = 1, in = 2
    b = torch.tensor([[2.0], [-1.0]])  # out = 2
    stream = [("base_model.model.model.embed_tokens.weight", torch.ones(3)),
              ("base_model.model.layers.0.q_proj.base_layer.weight", w),
              ("base_model.model.layers.0.q_proj.base_layer.bias", torch.zeros(2)),
              ("base_model.model.layers.0.q_proj.lora_A.default.weight", a),
              ("base_model.model.layers.0.q_proj.lora_B.default.weight", b)]
    out = dict(merge_stream(iter(stream), scaling=0.5, dtype=None))
    assert set(out) == {"model.embed_tokens.weight", "layers.0.q_proj.weight", "layers.0.q_proj.bias"}
    # W + 0.5 * B @ A = [[1 + 1, 2], [3 - 0.5, 4]]
    assert torch.equal(out["layers.0.q_proj.weight"], torch.tensor([[2.0, 2.0], [2.5, 4.0]]))
    with pytest.raises(RuntimeError, match="without both"):
        list(merge_stream(iter(stream[:4]), 0.5, None))


def test_bad_target_module_names_the_models_own(tiny_model_dir):
    from selfplay.train.engine import destroy_distributed

    with pytest.raises(ValueError, match=r"\['qkv'\] are not linear layers.*down_proj, gate_proj, k_proj"):
        Learner(tiny_model_dir, cfg(lora={"r": 4, "target_modules": ["q_proj", "qkv"]}), threads=1)
    destroy_distributed()


@pytest.mark.parametrize("stage", [0, 3])
def test_lora_round_trains_only_adapters_and_export_matches(learner, tiny_model_dir, tmp_path, stage):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    learner.reload(tiny_model_dir, cfg(zero_stage=stage))
    before = {n: p.detach().clone() for n, p in _full_named(learner).items()}
    pairs = learner.compute_reference(toy_pairs(16))
    summary = learner.train_round(pairs)
    assert summary["loss_last"] < summary["loss_first"]
    assert 0 < summary["trainable_params"] < summary["total_params"] / 10
    after = _full_named(learner)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all("lora_B" in n or "lora_A" in n for n in changed)  # base weights bitwise unchanged
    assert any("lora_B" in n for n in changed)

    # reference `initial` = the same network with adapters disabled = the base model directory
    base_ref = learner.compute_reference(toy_pairs(16), model_path=tiny_model_dir)
    assert base_ref.column("ref_chosen_logps").to_pylist() == pytest.approx(
        pairs.column("ref_chosen_logps").to_pylist(), abs=1e-5)
    assert json.loads(base_ref.schema.metadata[b"selfplay.reference"])["reference_model"] == str(tiny_model_dir)

    out = tmp_path / "policy"
    learner.save_hf(out)
    assert (out / "model.safetensors").is_file() and (out / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(out)
    probes = _probes(tok)
    ours = [torch.tensor(x) for x in learner.probe_logps(probes)]
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for a, b in zip(ours, _hf_logps(merged, probes)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for a, b in zip(ours, _hf_logps(PeftModel.from_pretrained(base, out / ADAPTER_DIR).eval(), probes)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
    adapter_cfg = json.loads((out / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_model_dir) and adapter_cfg["r"] == 4
    # the sync buckets carry exactly the merged, HF-named tensors
    exported = weights(learner.export_weights(bucket_mb=0.5))
    saved = merged.state_dict()
    assert set(exported) == {k for k in saved if not k.endswith("inv_freq")}
    assert all(torch.equal(exported[k], saved[k]) for k in exported)
    _check_sync_parts(learner, tiny_model_dir, exported, out)


def _check_sync_parts(learner, tiny_model_dir, merged: dict, out) -> None:
    """An adapter-only sync's parts (sync.lora: adapter): ``base`` is the unchanged base under HF names,
    ``adapter`` exactly the targeted layers' PEFT tensors (those ``adapter/`` holds), and base + alpha/r B A
    is the merged export."""
    from safetensors.torch import load_file

    from selfplay.generate.adapter import adapter_names
    from selfplay.generate.weights import checkpoint_names

    base = weights(learner.export_weights(0.5, 1, part="base"))
    adapter = weights(learner.export_weights(0.5, 1, part="adapter"))
    assert learner.lora_base() == str(tiny_model_dir)
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert set(base) == set(merged) and all(torch.equal(base[k], initial[k]) for k in initial)
    assert sorted(adapter) == adapter_names(checkpoint_names(tiny_model_dir), cfg().lora.target_modules)
    saved = load_file(str(out / ADAPTER_DIR / "adapter_model.safetensors"))
    assert set(saved) == set(adapter) and all(torch.equal(saved[k], adapter[k]) for k in adapter)
    for name in adapter:
        if ".lora_A." in name:
            module = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = adapter[name.replace(".lora_A.", ".lora_B.")]
            want = base[module + ".weight"] + LORA["alpha"] / LORA["r"] * (b @ adapter[name])
            assert torch.allclose(merged[module + ".weight"], want, atol=1e-6, rtol=0), module


@pytest.mark.slow
def test_merged_export_loads_in_vllm_with_the_learners_logps(learner, tiny_model_dir, tmp_path, vllm_child):
    """A real vLLM engine (CPU build, in the tier's child process: it patches process-wide torch settings) on
    the merged export reproduces the LoRA learner's log-probs."""
    learner.reload(tiny_model_dir, cfg())
    learner.train_round(learner.compute_reference(toy_pairs(16)))
    out = learner.save_hf(tmp_path / "policy")
    probes = _probes(learner.tokenizer)
    ours = learner.probe_logps(probes)
    base = learner.compute_reference(toy_pairs(4), model_path=tiny_model_dir)  # adapters off: the base
    moved = learner.compute_reference(toy_pairs(4))
    assert base.column("ref_chosen_logps").to_pylist() != moved.column("ref_chosen_logps").to_pylist()
    assert_vllm_logps_match(vllm_child, out, probes, ours, tmp_path)


def test_previous_merges_into_base_and_restart_rebuilds_base_plus_adapter(learner, tiny_model_dir, tmp_path):
    from selfplay.train.engine import iter_full_params

    learner.reload(tiny_model_dir, cfg(reference="previous"))
    learner.train_round(learner.compute_reference(toy_pairs(8)))
    learner.save_hf(tmp_path / "p0")
    exported = weights(learner.export_weights())
    pairs = learner.compute_reference(toy_pairs(8, seed=1))  # the previous policy scores round 2's pairs
    learner.train_round(pairs)  # starts by merging: the base is now p0's weights, adapters fresh
    base = {n.removeprefix("base_model.model.").replace(".base_layer.", "."): t
            for n, t in iter_full_params(learner.engine) if "lora_" not in n}
    assert set(base) == set(exported) and all(torch.equal(base[k], exported[k]) for k in base)
    assert learner.variant.base == str(tmp_path / "p0")
    adapter_cfg = json.loads((tmp_path / "p0" / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_model_dir)

    # `initial`: a learner started from an exported policy holds the base it names + the adapter
    learner.reload(tiny_model_dir, cfg())
    learner.train_round(learner.compute_reference(toy_pairs(8)))
    learner.save_hf(tmp_path / "p1")
    want = weights(learner.export_weights())
    learner.reload(tmp_path / "p1", cfg())
    assert learner.variant.base == str(tiny_model_dir) and not learner.variant.fresh
    got = weights(learner.export_weights())
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in got)


def test_checkpoint_resume_restores_adapters_bitwise(learner, tiny_model_dir, tmp_path):
    learner.reload(tiny_model_dir, cfg(checkpoint_every=2))
    pairs = learner.compute_reference(toy_pairs(16))
    stop = {}

    def interrupt(record):
        if record["step"] == 4 and not stop:
            stop["at"] = weights(learner.export_weights())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learner.train_round(pairs, checkpoint_dir=tmp_path / "ckpt", on_step=interrupt)
    learner.reload(tiny_model_dir, cfg(checkpoint_every=2))
    learner.load_checkpoint(tmp_path / "ckpt")
    assert all(torch.equal(v, stop["at"][k]) for k, v in weights(learner.export_weights()).items())
    resumed = learner.train_round(pairs, checkpoint_dir=tmp_path / "ckpt")
    resumed_w = weights(learner.export_weights())
    learner.reload(tiny_model_dir, cfg())
    learner.train_round(pairs)
    straight = weights(learner.export_weights())
    assert resumed["resumed_at_step"] == 4
    assert all(torch.equal(resumed_w[k], straight[k]) for k in straight)


def _full_named(learner) -> dict[str, torch.Tensor]:
    from selfplay.train.engine import iter_full_params

    return dict(iter_full_params(learner.engine))


def test_warm_start_trains_every_weight_then_becomes_the_base(learner, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from selfplay.config.schema import WarmStartConfig
    from selfplay.train.engine import iter_full_params

    learner.reload(tiny_model_dir, cfg())
    before = weights(learner.export_weights())
    rows = [{"prompt": r["prompt"], "reference": r["chosen"]} for r in toy_pairs(8).to_pylist()]
    summary = learner.sft_round(rows, WarmStartConfig(examples=8, micro_batch_size=4, learning_rate=1e-2))
    assert summary["trainable_params"] == summary["total_params"]  # full fine-tuning for the warm start
    after = weights(learner.export_weights())
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert isinstance(learner.variant, LoraWeights) and learner.variant.fresh  # LoRA again, on the warm-started base
    base = {n.removeprefix("base_model.model.").replace(".base_layer.", "."): t
            for n, t in iter_full_params(learner.engine) if "lora_" not in n}
    assert all(torch.equal(base[k], after[k]) for k in after)
    # the exported warm start is the base its own adapter applies to (was: base_model_name_or_path null)
    learner.save_hf(tmp_path / "initial")
    adapter_cfg = json.loads((tmp_path / "initial" / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tmp_path / "initial")
    assert learner.variant.base == str(tmp_path / "initial")
    base_model = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"], dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base_model, tmp_path / "initial" / ADAPTER_DIR).eval()
    probes = _probes(learner.tokenizer)
    for a, b in zip(learner.probe_logps(probes), _hf_logps(peft_model, probes)):
        assert torch.allclose(torch.tensor(a), b, atol=1e-5, rtol=0)
