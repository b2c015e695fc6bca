"""The learner's RNG state in a checkpoint is tensors, read back with ``weights_only=True``.

A checkpoint lives in the run directory, which on shared storage others may be able to write: a pickle
from there must never run code. A round-trip restores the exact random stream; a file whose pickle would
call a function is refused (and the function does not run); and no code in the project loads a pickle
with ``weights_only=False``.
"""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

from selfplay.train.checkpoint import load_rng, save_rng

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_rng_round_trip_restores_the_random_stream(tmp_path):
    torch.manual_seed(123)
    torch.rand(7)
    save_rng(tmp_path / "rng.pt")
    expected = torch.rand(5)
    torch.rand(11)  # move the stream on
    load_rng(tmp_path / "rng.pt")
    assert torch.equal(torch.rand(5), expected)


class _Planted:
    """What a hostile pickle looks like: unpickling it calls a function (here: creates a file)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "rng_rank0.pt"
    torch.save({"torch": torch.get_rng_state(), "cuda": [], "extra": _Planted(marker)}, bad)
    with pytest.raises(ValueError, match="rng_rank0.pt is not an RNG state written by selfplay"):
        load_rng(bad)
    assert not marker.exists()


def test_no_unsafe_torch_load_in_the_project():
    hits = [f"{path.relative_to(ROOT)}:{n}" for folder in ("selfplay", "actors", "bench")
            for path in (ROOT / folder).rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"weights_only\s*=\s*False", line)]
    assert not hits
