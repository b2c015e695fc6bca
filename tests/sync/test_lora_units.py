"""The adapter-only LoRA sync below Ray and vLLM: which parts a sync ships, adapter names and directories,
the filesystem layout of parts, the config that turns it on, and the 7B projection of ``bench.sync``."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from selfplay.config import RunConfig
from selfplay.config.schema import LORA_DEFAULT_TARGETS
from selfplay.generate.adapter import AdapterSpec, adapter_names, write_adapter_dir
from selfplay.generate.weights import checkpoint_names, decode_sync
from selfplay.sync.base import SyncReport, combine, lora_parts
from selfplay.sync.buckets import BucketError, pack_buckets
from selfplay.sync.filesystem import prune, read_weights_dir, version_dir, write_weights_dir

TARGETS = tuple(LORA_DEFAULT_TARGETS)


def test_parts_ship_the_base_only_when_the_generators_hold_another(tmp_path):
    base = tmp_path / "initial" / "policy"
    base.mkdir(parents=True)
    assert lora_parts(str(base), str(tmp_path / "initial" / ".." / "initial" / "policy")) == ("adapter",)
    assert lora_parts(str(base), str(tmp_path / "iter_000" / "policy")) == ("base", "adapter")
    assert lora_parts(None, str(base)) == ("base", "adapter")  # the learner's base is not on disk
    assert lora_parts(str(base), None) == ("base", "adapter")  # the generators hold pushed buckets
    # reference: previous merges at the next round's start: the merged policy now, the adapter alone next
    assert lora_parts(str(base), str(tmp_path / "iter_000" / "policy"), "previous") == ("policy",)
    assert lora_parts(str(base), str(base), "previous") == ("adapter",)


def test_combined_report_adds_bytes_and_seconds_and_keeps_the_last_checksum():
    base = SyncReport("object_store", 3, 2, 1000, "b" * 64, 0.5, 1.0, ["g0"], parts=["base"])
    adapter = SyncReport("object_store", 3, 1, 40, "a" * 64, 0.1, 0.2, ["g0"], parts=["adapter"])
    both = combine([base, adapter])
    assert (both.buckets, both.bytes, both.checksum, both.parts) == (3, 1040, "a" * 64, ["base", "adapter"])
    assert both.export_s == pytest.approx(0.6) and both.transfer_s == pytest.approx(1.2)
    assert combine([adapter]) is adapter


def test_adapter_names_cover_every_targeted_layer_of_the_model(tiny_model_dir):
    names = checkpoint_names(tiny_model_dir)
    all_ = adapter_names(names, TARGETS)
    layers = sum(1 for n in names if n.endswith("self_attn.q_proj.weight"))
    assert len(all_) == 2 * len(TARGETS) * layers
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in all_
    assert "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight" in all_
    only_q = adapter_names(names, ["q_proj"])
    assert len(only_q) == 2 * layers and all(".q_proj.lora_" in n for n in only_q)


def test_vllm_rank_is_the_smallest_allowed_one_that_holds_r():
    assert [AdapterSpec(r, 16.0, TARGETS).max_lora_rank() for r in (1, 4, 8, 9, 64)] == [1, 8, 8, 16, 64]
    with pytest.raises(ValueError, match="train.lora.r=600"):
        AdapterSpec(600, 16.0, TARGETS).max_lora_rank()


def test_adapter_directory_is_one_peft_loads(tiny_model_dir, tmp_path):
    """The directory a generator hands vLLM: PEFT itself loads it onto the base, with the pushed tensors."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = AdapterSpec(4, 8.0, TARGETS)
    names = adapter_names(checkpoint_names(tiny_model_dir), TARGETS)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)

    def shape(name: str) -> tuple[int, int]:
        module = dict(model.named_modules())[name.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]]
        return (4, module.in_features) if ".lora_A." in name else (module.out_features, 4)

    tensors = {n: torch.randn(shape(n), generator=g) for n in names}
    blobs = list(pack_buckets(tensors.items(), bucket_mb=0.05, version=2))
    named, _ = decode_sync(blobs, 2, names)  # the generator's check before it writes anything
    out = write_adapter_dir(tmp_path / "v2", named, spec)
    peft = PeftModel.from_pretrained(model, str(out))
    loaded = {n.replace(".default", ""): p for n, p in peft.named_parameters() if "lora_" in n}
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[n], tensors[n]) for n in tensors)
    assert peft.peft_config["default"].lora_alpha == 8.0 and peft.peft_config["default"].r == 4

    with pytest.raises(BucketError, match="missing"):  # an adapter without one layer is refused before loading
        decode_sync(list(pack_buckets(list(tensors.items())[1:], version=3)), 3, names)


def test_filesystem_parts_live_beside_their_version_and_are_pruned_together(tmp_path):
    blob = list(pack_buckets({"w": torch.ones(3)}.items(), version=1))
    for v in (1, 2, 3):
        write_weights_dir(tmp_path, v, blob if v == 1 else list(pack_buckets({"w": torch.ones(3)}.items(), version=v)),
                          "base")
        write_weights_dir(tmp_path, v, list(pack_buckets({"a": torch.zeros(2)}.items(), version=v)), "adapter")
    write_weights_dir(tmp_path, 4, list(pack_buckets({"w": torch.ones(3)}.items(), version=4)))
    assert version_dir(tmp_path, 3, "adapter").name == "v000003-adapter"
    assert len(read_weights_dir(version_dir(tmp_path, 3, "adapter"), 3)) == 1
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000003-adapter", "v000003-base", "v000004"]


BASE = {"policy": {"preset": "nano"}, "task": {"type": "arithmetic"}, "judge": {"type": "verifier"}}


def _cfg(r: int = 8, generation: dict | None = None, gpus: float = 1.0, **sync) -> RunConfig:
    return RunConfig(**BASE, train={"lora": {"r": r}}, generation=generation or {}, sync=sync,
                     resources={"generator_gpus": gpus})


def test_config_resolves_adapter_sync_and_names_the_field_it_cannot_honour():
    assert _cfg().adapter_sync and _cfg(method="filesystem").adapter_sync
    assert not _cfg(gpus=0).adapter_sync  # auto on CPU generators: merged (vLLM's CPU LoRA path is slower)
    assert _cfg(gpus=0, lora="adapter").adapter_sync  # asked for: honoured on CPU too
    assert not _cfg(lora="merged").adapter_sync
    assert not _cfg(r=0).adapter_sync  # no LoRA, nothing to choose
    assert not _cfg(generation={"backend": "hf"}).adapter_sync  # auto falls back to merged
    with pytest.raises(ValidationError, match="sync.lora"):
        _cfg(generation={"backend": "hf"}, lora="adapter")


def test_7b_projection_is_llama2_7b_shaped():
    from bench.sync_lora import projection_7b

    merged, adapter = projection_7b(8, list(TARGETS))
    assert merged == 2 * 6_738_415_616  # Llama-2-7B's parameter count, bf16
    # r = 8 on all seven projections: 32 layers x (4 x 8 x (4096 + 4096) + 3 x 8 x (4096 + 11008)) in fp32
    assert adapter == 4 * 32 * (4 * 8 * 8192 + 3 * 8 * 15104)
