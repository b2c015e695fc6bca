"""A CPU learner compiles no DeepSpeed extension at start-up.

DeepSpeed's CPU backend JIT-builds ``deepspeed_shm_comm`` in ``init_distributed``. A build killed part way
leaves its ``lock`` file behind, and every later build of it on that machine waited for that lock forever
(the whole e2e tier hung this way after one interrupted run). The test plants such a stale lock in a
fresh extensions dir and checks that a single-rank learner world still comes up, and builds nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import torch
    from selfplay.train.engine import destroy_distributed, init_distributed
    init_distributed(rank=0, world_size=1, master_addr=None, master_port=None, timeout_s=60)
    assert torch.distributed.is_initialized()
    destroy_distributed()
    print("up")
""")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU backend's build")
def test_learner_world_starts_past_a_stale_extension_lock(tmp_path):
    ext = tmp_path / "torch_extensions"
    for sub in ("deepspeed_shm_comm", "py311_cpu/deepspeed_shm_comm"):
        (ext / sub).mkdir(parents=True)
        (ext / sub / "lock").touch()  # what a build killed mid-way leaves
    before = sorted(p.relative_to(ext) for p in ext.rglob("*"))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip().endswith("up")
    assert sorted(p.relative_to(ext) for p in ext.rglob("*")) == before  # nothing was built
