"""Toy data and weight helpers shared by the learner tests."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pyarrow as pa
import torch

from selfplay.sync.buckets import unpack_bucket


def toy_pairs(n: int = 16, seed: int = 0) -> pa.Table:
    """A separable pair set: the chosen answer is the pattern "abab..", the rejected one "zzz..."."""
    rng = random.Random(seed)
    def chat(text: str) -> str:  # chat prompts are stored JSON-encoded, as the driver writes them
        return json.dumps([{"role": "user", "content": text}])

    rows = [{"prompt": chat(f"{rng.randint(0, 99)}+{rng.randint(0, 99)}="), "chosen": "ab" * rng.randint(2, 3),
             "rejected": "z" * rng.randint(3, 6), "pair_id": i} for i in range(n)]
    return pa.Table.from_pylist(rows)


def learner_groups(model_dir, cfg, out_dir):
    """A module fixture's body for a 2-rank ``LearnerGroup`` on Ray: yields ``live()``, which returns the
    current group, starting one on first use and again after a test ended it (a killed rank), so any
    subset of a module's tests runs in any order. Every group made is shut down when the fixture ends.
    ``out_dir()`` gives each new group its own output directory."""
    from actors.learner import LearnerGroup
    from selfplay.config.schema import ResourcesConfig

    resources = ResourcesConfig(learners=2, learner_cpus=1, threads_per_actor=1, placement="pack")
    made: list = []

    def live():
        if made and made[-1].lost is not None:  # a rank died under a test that did not end the group
            made[-1].shutdown()
        if not made or not made[-1].actors:
            made.append(LearnerGroup(model_dir, cfg, num_learners=2, resources=resources, run_seed=0,
                                     output_dir=out_dir(), setup_timeout_s=300))
        return made[-1]

    try:
        yield live
    finally:
        for g in made:
            g.shutdown()


def weights(buckets: list[bytes]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for blob in buckets:
        out.update(unpack_bucket(blob)[0])
    return out


def pair_accuracy(ref: pa.Table, now: pa.Table) -> float:
    """Fraction of pairs whose implicit reward margin (now vs ref log-probs) is positive."""
    rc, rr = (torch.tensor(ref.column(c).to_pylist()) for c in ("ref_chosen_logps", "ref_rejected_logps"))
    pc, pr = (torch.tensor(now.column(c).to_pylist()) for c in ("ref_chosen_logps", "ref_rejected_logps"))
    return float(((pc - rc) - (pr - rr) > 0).float().mean())


_VLLM_PROBE = """
import json, sys
from selfplay.env import setup_env
setup_env(threads=1)
from selfplay.generate.vllm_engine import VLLMEngine
engine = VLLMEngine(sys.argv[1], dtype="float32", max_model_len=128)
print("PROBE" + json.dumps(engine.probe_logps(json.loads(sys.argv[2]))))
"""


def assert_vllm_logps_match(policy_dir, token_ids: list[list[int]], ours: list[list[float]],
                            tolerance: float = 1e-4) -> None:
    """A real vLLM engine (CPU build, fp32) on ``policy_dir`` gives ``ours`` log-probs for ``token_ids``
    within ``tolerance``. vLLM runs in a subprocess: it patches process-wide torch settings that other
    tests in this process rely on."""
    done = subprocess.run([sys.executable, "-c", _VLLM_PROBE, str(policy_dir), json.dumps(token_ids)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.split("PROBE", 1)[1])
    assert [len(x) for x in theirs] == [len(x) for x in ours]
    worst = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    assert worst <= tolerance, worst
