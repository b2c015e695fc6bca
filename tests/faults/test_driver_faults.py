"""Faults during a real run (CLI subprocess; local Ray, vLLM generators, a DeepSpeed learner).

The shared uninterrupted micro run (``micro_run``: the same recipe with two iterations) is the
reference for iteration 0. Then a second run directory, of one iteration and with a checkpoint after
every step, goes through every kind of fault ``selfplay.loop.faults`` can inject, each a real process
kill at an exact point:

1. a generator replica is killed after the first shard (Ray restarts it, the pool restores it, the run
   goes on), then the learner rank is killed after its second optimizer step (the first one's
   checkpoint is complete by then; the round has three): the train stage fails
   cleanly (exit 1, the error names the iteration, the stage and the rank; the manifest does not list
   train, no policy is exported);
2. the rerun resumes the round from its checkpoint and the driver is SIGKILLed during the sync;
3. the rerun starts the generators on the exported policy and finishes.

The run must end with the reference's generations, pairs, final weights (bitwise) and evaluation. A
non-finite loss is checked through the driver as well (``make test-soak``), by resuming a copy of the
reference at train with one reference log-prob poisoned.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.e2e.conftest import MICRO, run_driver

pytestmark = pytest.mark.slow  # short CLI runs of a micro recipe, each starting Ray, vLLM and DeepSpeed

# Iteration 0 of this recipe is iteration 0 of MICRO: neither the iteration count nor the checkpoints
# change what is sampled or trained (the bitwise comparisons below would see it).
RECIPE = copy.deepcopy(MICRO)
RECIPE.update(name="faults", iterations=1)
RECIPE["train"] = {**MICRO["train"], "checkpoint_every": 1}


def _manifest(run_dir) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _stages(run_dir, k=0) -> list[str]:
    return list(_manifest(run_dir)["iterations"].get(str(k), {}).get("stages", {}))


def _column(run_dir, name, column):
    return pq.read_table(run_dir / "iter_000" / name).column(column).to_pylist()


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "iter_000" / "policy" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(micro_run, tmp_path_factory):
    recipe = tmp_path_factory.mktemp("faults") / "faults.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    return recipe, micro_run.run_dir


def test_killed_generator_learner_and_driver_leave_a_resumable_run(reference, tmp_path):
    import torch

    recipe, ref = reference
    run = tmp_path / "run"

    first = run_driver(recipe, run, kill_at="generator@0:1,learner@0:2")
    log = first.stdout
    assert first.returncode == 1, log[-4000:]
    assert "killed selfplay-generator-" in log and "killed selfplay-learner-" in log
    assert "iteration 0, stage train failed" in log and "LearnerLostError" in log and "rank 0" in log, log[-3000:]
    assert _stages(run) == ["generate", "judge", "pairs", "reference"]  # no silent partial update
    assert not (run / "iter_000" / "policy").exists()
    assert (run / "iter_000" / "checkpoint" / "latest").exists()
    # the generator came back and the generations are exactly the reference's
    assert _column(run, "generations.parquet", "response") == _column(ref, "generations.parquet", "response")

    second = run_driver(recipe, run, kill_at="sync@0")
    assert second.returncode == -signal.SIGKILL, (
        "the driver was not killed during sync: stages.sync must call faults.kill_point('sync', k)\n"
        + second.stdout[-3000:])
    assert _stages(run) == ["generate", "judge", "pairs", "reference", "train", "export"]
    assert _manifest(run)["iterations"]["0"]["stages"]["train"]["resumed_at_step"] >= 1
    want, got = _weights(ref), _weights(run)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)  # bitwise

    third = run_driver(recipe, run)
    assert third.returncode == 0, third.stdout[-4000:]
    entry = _manifest(run)["iterations"]["0"]
    assert entry["complete"] is True and entry["stages"]["sync"]["version"] == 1
    assert sorted(_column(run, "pairs.parquet", "pair_id")) == sorted(_column(ref, "pairs.parquet", "pair_id"))
    assert json.loads((run / "iter_000" / "eval.json").read_text())["version"] == 1
    # the restarted generators hold the new policy: evaluation answers are the reference's
    assert _column(run, "eval_generations.parquet", "response") == \
        _column(ref, "eval_generations.parquet", "response")


@pytest.mark.soak
def test_nonfinite_loss_fails_the_train_stage_naming_the_batch(micro_run, tmp_path):
    """In ``make test-soak`` and ``make test-all``: its parts are covered in ``make test`` by
    tests/faults/test_learner_faults.py::test_nonfinite_loss_names_the_batch_and_keeps_the_group (a real
    learner group names the rank, the step, the table rows and "step not applied", and is not counted lost)
    and by test_killed_generator_learner_and_driver_leave_a_resumable_run above (a failed train stage: exit 1,
    "iteration 0, stage train failed", train not in the manifest, no policy exported). This one is the
    poisoned artifact read back by a resumed driver, a launch of its own."""
    run = tmp_path / "run"
    shutil.copytree(micro_run.run_dir, run)
    manifest = _manifest(run)
    manifest["initial_policy"] = str(run / "initial" / "policy")
    del manifest["iterations"]["1"]  # the reference ran two iterations; this copy ends inside the first
    shutil.rmtree(run / "iter_001")
    entry = manifest["iterations"]["0"]
    entry["complete"] = False
    entry["stages"] = {k: v for k, v in entry["stages"].items() if k in ("generate", "judge", "pairs", "reference")}
    (run / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(run / "iter_000" / "policy")
    shutil.rmtree(run / "iter_000" / "checkpoint", ignore_errors=True)  # the round's end checkpoint
    (run / "iter_000" / "train_metrics.jsonl").unlink()
    table = pq.read_table(run / "iter_000" / "reference.parquet")
    logps = table.column("ref_chosen_logps").to_pylist()
    logps[5] = float("nan")  # injected fault: one pair's reference log-prob
    table = table.set_column(table.schema.get_field_index("ref_chosen_logps"), "ref_chosen_logps",
                             pa.array(logps, table.schema.field("ref_chosen_logps").type))
    pq.write_table(table, run / "iter_000" / "reference.parquet")

    result = run_driver(micro_run.recipe, run)
    log = result.stdout
    assert result.returncode == 1, log[-4000:]
    assert "iteration 0, stage train failed" in log and "NonFiniteError" in log, log[-3000:]
    assert re.search(r"train round step \d+/\d+ \(epoch 0\), table rows \[[^\]]*\b5\b", log), log[-3000:]
    assert "step not applied" in log
    assert "LearnerLostError" not in log  # every rank stopped together: nothing was lost
    assert "train" not in _stages(run) and not (run / "iter_000" / "policy").exists()
