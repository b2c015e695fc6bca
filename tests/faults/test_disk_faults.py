"""Failed writes (disk full, read-only) leave the previous artifacts intact and readable.

``tests/loop/test_rundir.py`` covers the run directory's own files; this covers the other writers of a
run: generation shards, the exported policy directory and the learner checkpoint. Failures are injected
at the write call (as root, a chmod would not stop a write); everything else is the real code.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from selfplay.config.schema import TrainConfig
from selfplay.generate import Completion, Sampling
from selfplay.generate.shards import completed_shards, plan_shards, read_shard, shard_path, write_shard
from tests.train.train_helpers import toy_pairs, weights

NO_SPACE = OSError(errno.ENOSPC, "No space left on device (injected)")
READ_ONLY = OSError(errno.EROFS, "Read-only file system (injected)")


def _groups(shard, n=2):
    return [[Completion(i, j, (5, 6), "ab", "stop", None, 0) for j in range(n)] for i in range(shard.start, shard.stop)]


@pytest.mark.parametrize("fault", ["no_space", "read_only"])
def test_failed_shard_write_keeps_the_shards_before_it(tmp_path, monkeypatch, fault):
    prompts = [f"{i}+1=" for i in range(6)]
    shards = plan_shards(prompts, 2, Sampling(n=2, seed=1), version=0)
    write_shard(tmp_path, shards[0], _groups(shards[0]))

    def half_then_fail(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1 half a parquet file")
        raise NO_SPACE

    def refuse(src, dst):
        raise READ_ONLY

    if fault == "no_space":
        monkeypatch.setattr("selfplay.generate.shards.pq.write_table", half_then_fail)
    else:
        monkeypatch.setattr("selfplay.atomic.os.replace", refuse)
    with pytest.raises(OSError, match="injected"):
        write_shard(tmp_path, shards[1], _groups(shards[1]))
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_00000.parquet"]  # no temporary left over
    assert completed_shards(tmp_path, shards) == {0}  # a resumed call generates shards 1 and 2 only
    assert read_shard(shard_path(tmp_path, 0)) == _groups(shards[0])


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    from actors.learner import LocalLearner

    cfg = TrainConfig(learning_rate=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant", epochs=1)
    group = LocalLearner.start(tiny_model_dir, cfg)
    yield group
    group.shutdown()


def test_failed_policy_export_keeps_the_previous_policy(learner, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "policy"
    learner.save_hf(out)
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(out).state_dict().items()}
    learner.train_round(learner.compute_reference(toy_pairs(8)))  # the weights move on

    def partial_then_fail(state, save_dir, *args, **kwargs):
        (Path(save_dir) / "model.safetensors").write_bytes(b"half")
        raise NO_SPACE

    monkeypatch.setattr("huggingface_hub.save_torch_state_dict", partial_then_fail)
    with pytest.raises(OSError, match="injected"):
        learner.save_hf(out)
    monkeypatch.undo()

    assert [p.name for p in tmp_path.iterdir()] == ["policy"]  # the half-written copy was removed
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_failed_checkpoint_keeps_the_last_good_one(learner, tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint"
    pairs = learner.compute_reference(toy_pairs(8, seed=1))
    learner.train_round(pairs, checkpoint_dir=ckpt)  # checkpoint at the end of the round
    good = weights(learner.export_weights())
    tag = (ckpt / "latest").read_text()

    engine = learner.learner.engine
    real_save = engine.save_checkpoint

    def partial_then_fail(save_dir, tag=None, **kwargs):
        (Path(save_dir) / tag).mkdir(parents=True, exist_ok=True)
        (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"half")
        raise NO_SPACE

    monkeypatch.setattr(engine, "save_checkpoint", partial_then_fail)
    with pytest.raises(OSError, match="injected"):
        learner.train_round(learner.compute_reference(toy_pairs(8, seed=2)), checkpoint_dir=ckpt)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)

    assert (ckpt / "latest").read_text() == tag  # still the last complete checkpoint
    moved = weights(learner.export_weights())
    assert any(not torch.equal(good[k], moved[k]) for k in good)  # the failed round did train
    learner.load_checkpoint(ckpt)
    restored = weights(learner.export_weights())
    assert all(torch.equal(good[k], restored[k]) for k in good)


def test_nonfinite_weights_are_never_exported(learner, tmp_path):
    """A diverged round (NaN/inf weights) must not be committed as the iteration's policy."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "policy"
    learner.save_hf(out)
    before = (out / "model.safetensors").read_bytes()
    name, param = next(iter(learner.learner.engine.module.named_parameters()))
    saved = param.detach().clone()
    with torch.no_grad():
        param.view(-1)[3] = float("inf")  # injected fault: one weight diverged
    try:
        with pytest.raises(Exception, match=r"NaN/inf in 1 of \d+ tensors \(.*embed_tokens.*\); .* was not written"):
            learner.save_hf(out)
    finally:
        with torch.no_grad():
            param.copy_(saved)
    assert (out / "model.safetensors").read_bytes() == before  # the last good export is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]
    assert torch.isfinite(AutoModelForCausalLM.from_pretrained(out).state_dict()[name.removeprefix("module.")]).all()


def test_saving_the_same_step_again_keeps_the_last_good_checkpoint(learner, tmp_path, monkeypatch):
    """A round resumed exactly at its end saves its last step again: a failure then must not damage
    the checkpoint already there (the new one is written beside it, then swapped in)."""
    ckpt = tmp_path / "checkpoint"
    learner.train_round(learner.compute_reference(toy_pairs(8, seed=3)), checkpoint_dir=ckpt)
    good = weights(learner.export_weights())
    tag = (ckpt / "latest").read_text()
    engine = learner.learner.engine
    real_save = engine.save_checkpoint
    written = []

    def partial_then_fail(save_dir, tag=None, **kwargs):
        written.append(tag)
        (Path(save_dir) / tag).mkdir(parents=True, exist_ok=True)
        (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"half")
        raise NO_SPACE

    monkeypatch.setattr(engine, "save_checkpoint", partial_then_fail)
    with pytest.raises(OSError, match="injected"):
        learner.learner.save_checkpoint(ckpt)  # same global step as the round's last save
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    assert written and written[0] != tag  # written beside the good one, not over it
    assert (ckpt / "latest").read_text() == tag
    learner.load_checkpoint(ckpt)
    assert all(torch.equal(good[k], v) for k, v in weights(learner.export_weights()).items())
    learner.learner.save_checkpoint(ckpt)  # the retry succeeds and replaces the old tag
    assert (ckpt / "latest").read_text() == f"{tag}.1" or (ckpt / "latest").read_text().startswith(tag + ".")
    assert not (ckpt / tag).exists()


def test_export_takes_the_round_from_its_policy_or_from_an_older_runs_checkpoint(learner, tmp_path):
    """The train stage now writes the round's policy itself and keeps no end-of-round checkpoint; a run
    directory from before (train done, the round only in ``checkpoint/``) still exports that round.
    Either way the round's checkpoints are removed once its policy is on disk."""
    from transformers import AutoModelForCausalLM

    from selfplay.loop.stages import Iteration, export

    it = Iteration(k=0, dir=tmp_path / "iter_000", policy_in=tmp_path / "unused", seed=0)
    ckpt = it.dir / "checkpoint"
    learner.train_round(learner.compute_reference(toy_pairs(8, seed=4)), checkpoint_dir=ckpt,
                        final_checkpoint=False)
    assert not ckpt.exists()  # checkpoint_every 0 and no end checkpoint: nothing written
    learner.train_round(learner.compute_reference(toy_pairs(8, seed=5)), checkpoint_dir=ckpt)  # the old way
    round_weights = weights(learner.export_weights())
    learner.train_round(learner.compute_reference(toy_pairs(8, seed=6)))  # the learner moves past that round
    assert learner.holds != str(ckpt)

    assert export(it, lambda: learner) == {"policy": str(it.policy_out)}
    exported = AutoModelForCausalLM.from_pretrained(it.policy_out).state_dict()
    assert all(torch.equal(round_weights[k], exported[k]) for k in round_weights)  # the checkpoint's round
    assert not ckpt.exists()

    def no_learners():
        raise AssertionError("export started learners although the policy was written")

    ckpt.mkdir()  # a leftover (e.g. a mid-round checkpoint of the round that then finished)
    assert export(it, no_learners) == {"policy": str(it.policy_out)}
    assert not ckpt.exists()
