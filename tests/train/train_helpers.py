"""Toy data and weight helpers shared by the learner tests."""

from __future__ import annotations

import json
import random

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


class LearnerGroups:
    """The 2-rank ``LearnerGroup`` on Ray that the tier's modules share (``tests/train/conftest.py``):
    ``groups()`` returns the live group, starting one on first use and again after a test ended it (a
    killed rank), so any subset of the tests runs in any order; each test ``reload``s it with its own
    config. A test that starts a group of its own (a resumed group after a kill) may ``adopt`` it, so the
    tests after it need not start another. ``out_dir()`` gives each new group its own output directory."""

    def __init__(self, model_dir, cfg, out_dir) -> None:
        from selfplay.config.schema import ResourcesConfig

        self.model_dir, self.cfg, self.out_dir = model_dir, cfg, out_dir
        self.resources = ResourcesConfig(learners=2, learner_cpus=1, threads_per_actor=1, placement="pack")
        self.made: list = []

    def __call__(self):
        from actors.learner import LearnerGroup

        if self.made and self.made[-1].lost is not None:  # a rank died under a test that did not end the group
            self.made[-1].shutdown()
        if not self.made or not self.made[-1].actors:
            self.made.append(LearnerGroup(self.model_dir, self.cfg, num_learners=2, resources=self.resources,
                                          run_seed=0, output_dir=self.out_dir(), setup_timeout_s=300))
        return self.made[-1]

    def adopt(self, group) -> None:
        """``group`` (started by a test, healthy) is the live group from now on."""
        self.made.append(group)

    def shutdown(self) -> None:
        for g in self.made:
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


def assert_vllm_logps_match(child, policy_dir, token_ids: list[list[int]], ours: list[list[float]], tmp,
                            tolerance: float = 1e-4) -> None:
    """A real vLLM engine (CPU build, fp32) on ``policy_dir`` gives ``ours`` log-probs for ``token_ids``
    within ``tolerance``. vLLM runs in the tier's child process (``vllm_child``, ``tests/generate/vllm_steps.py``):
    it patches process-wide torch settings that other tests in this process rely on."""
    (theirs,) = child.run_steps(policy_dir, [{"op": "probe", "seqs": token_ids}], tmp, max_model_len=128)
    assert [len(x) for x in theirs] == [len(x) for x in ours]
    worst = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    assert worst <= tolerance, worst
