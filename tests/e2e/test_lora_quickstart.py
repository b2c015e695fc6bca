"""The quick start with LoRA, end to end: ``selfplay run recipes/quickstart.yaml --set iterations=1
--set train.lora.r=8``, shrunk with ``--set`` to fit the test budget (``LORA_TRACKED`` in
tests/e2e/conftest.py). Every part is real: local Ray, the vLLM (CPU) generator, the DeepSpeed learner with
PEFT adapters, the verified adapter-only weight sync. The same run is tracked (wandb, mlflow), which
tests/e2e/test_tracking_run.py checks: one driver run read two ways (``lora_tracked_run``).

The logged trainable parameter count is checked against one computed here from the policy's own
``config.json`` (r x (in + out) per adapted projection per layer), not against the learner's figure.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

pytestmark = pytest.mark.slow


def lora_params(config: dict, r: int) -> int:
    """Adapter parameters of a Llama config with LoRA rank r on q/k/v/o and gate/up/down: r x (in + out)."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    hd = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]
    return r * sum(i + o for i, o in shapes) * config["num_hidden_layers"]


def test_quickstart_iteration_with_lora_r8(lora_tracked_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, log = lora_tracked_run.run_dir, lora_tracked_run.log
    assert lora_tracked_run.returncode == 0, log[-5000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["recipe"]["train"]["lora"]["r"] == 8
    stages = manifest["iterations"]["0"]["stages"]
    assert manifest["iterations"]["0"]["complete"] is True and stages["train"]["steps"] > 0

    policy = run_dir / "iter_000" / "policy"
    config = json.loads((policy / "config.json").read_text())
    want = lora_params(config, 8)
    assert stages["train"]["trainable_params"] == want < stages["train"]["total_params"] / 5
    logged = re.search(r"train: [\d.]+s.*?trainable_params=(\d+)", log, re.S)  # the console may wrap the line
    assert logged and int(logged.group(1)) == want, log[-3000:]

    # the exported policy: merged weights + a PEFT adapter on the warm-started initial policy
    adapter_cfg = json.loads((policy / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(run_dir / "initial" / "policy")
    assert adapter_cfg["r"] == 8
    probe = torch.tensor([[1, 5, 20, 30, 6, 40, 41, 2]])
    merged = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"], dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, policy / "adapter").eval()
    with torch.no_grad():
        a, b = merged(probe).logits, peft(probe).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=0)
    # sync.lora adapter: the generator already held the warm-started base, so only the adapter moved,
    # verified on the probe (base + adapter in vLLM against the learner)
    sync = stages["sync"]
    assert sync["parts"] == ["adapter"] and sync["max_diff"] < 1e-3
    adapter_bytes = (policy / "adapter" / "adapter_model.safetensors").stat().st_size
    assert want * 4 <= sync["bytes"] < min(adapter_bytes + 65_536, (policy / "model.safetensors").stat().st_size / 5)
