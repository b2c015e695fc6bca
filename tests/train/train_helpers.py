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
