"""The learner's exported directory, loaded by a real vLLM engine (CPU build), reproduces the learner's
log-probs on a probe batch within 1e-4 (fp32). vLLM runs in a subprocess: it patches process-wide torch
settings that other tests in this process rely on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_helpers import toy_pairs

from selfplay.config.schema import TrainConfig
from selfplay.train import Learner

VLLM_PROBE = """
import json, sys
from selfplay.env import setup_env
setup_env(threads=1)
from selfplay.generate.vllm_engine import VLLMEngine
engine = VLLMEngine(sys.argv[1], dtype="float32", max_model_len=128)
print("PROBE" + json.dumps(engine.probe_logps(json.loads(sys.argv[2]))))
"""


@pytest.mark.slow
def test_trained_export_loads_in_vllm_with_the_learners_logps(tiny_model_dir, tmp_path):
    cfg = TrainConfig(learning_rate=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant")
    learner = Learner(tiny_model_dir, cfg, threads=1)
    try:
        pairs = learner.compute_reference(toy_pairs(8))
        learner.train_round(pairs)  # weights differ from the initial directory's
        out = learner.save_hf(tmp_path / "policy")
        tok_ids = [[1, 5, 20, 30, 6, 40, 2], [1, 5, 12, 13, 14, 15, 16, 6, 17, 18, 2]]
        ours = learner.probe_logps(tok_ids)
    finally:
        learner.shutdown()
    done = subprocess.run([sys.executable, "-c", VLLM_PROBE, out, json.dumps(tok_ids)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.split("PROBE", 1)[1])
    assert [len(x) for x in theirs] == [len(x) for x in ours]
    worst = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    assert worst <= 1e-4, worst
