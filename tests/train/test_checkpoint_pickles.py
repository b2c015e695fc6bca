"""No file of a learner checkpoint is unpickled with code.

A checkpoint lives in the run directory, which on shared storage others may be able to write: a pickle
from there must never run code. The RNG state is tensors, read back with ``weights_only=True`` (a
round-trip restores the exact random stream); DeepSpeed's own files are opened with ``weights_only=True``
before DeepSpeed reads them, and real ZeRO-1/2/3 checkpoints pass that check. A file whose pickle would
call a function is refused and the function does not run. No code in the project loads a pickle with
``weights_only=False``.
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


def test_a_deepspeed_file_with_code_is_refused_before_deepspeed_reads_it(tmp_path):
    from selfplay.train.checkpoint import check_tensor_files

    marker = tmp_path / "ran"
    tag = tmp_path / "step00000004"
    tag.mkdir()
    torch.save({"module": {"w": torch.zeros(2)}, "ds_version": "0.19.8", "global_steps": 4}, tag / "ok.pt")
    check_tensor_files(tag)  # tensors and plain data pass
    torch.save({"module": {"w": torch.zeros(2)}, "client_state": _Planted(marker)},
               tag / "mp_rank_00_model_states.pt")
    with pytest.raises(ValueError, match="mp_rank_00_model_states.pt holds more than tensors and plain data"):
        check_tensor_files(tag)
    assert not marker.exists()


@pytest.mark.parametrize("variant", [dict(zero_stage=1), dict(zero_stage=2, optimizer_offload=True),
                                     dict(precision="bf16", zero_stage=3)])
def test_real_deepspeed_checkpoints_pass_the_check_and_resume(tiny_model_dir, tmp_path, variant):
    from train_helpers import toy_pairs

    from selfplay.config.schema import TrainConfig
    from selfplay.train import Learner
    from selfplay.train.checkpoint import check_tensor_files

    cfg = TrainConfig(learning_rate=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant", epochs=1,
                      checkpoint_every=2, **variant)
    learner = Learner(tiny_model_dir, cfg, output_dir=tmp_path / "out", threads=1)
    try:
        learner.train_round(learner.compute_reference(toy_pairs(16)), checkpoint_dir=tmp_path / "ckpt")
        tag = (tmp_path / "ckpt" / "latest").read_text().strip()
        assert len(list((tmp_path / "ckpt" / tag).glob("*.pt"))) >= 2  # model states, optimizer, RNG
        check_tensor_files(tmp_path / "ckpt" / tag)
        assert learner.load_checkpoint(tmp_path / "ckpt")["tag"] == tag
    finally:
        learner.shutdown()
