"""Integrity and rescue: what a run trusts is what it checked, and a failed run can be rescued.

No Ray here: run directories are opened by the real ``open_run_dir`` and stage states are written the
way the driver writes them; the checks under test are the real code.
"""

from __future__ import annotations

import json
import logging
import math
import typing

import pytest
import yaml

from selfplay.config import ConfigError, load_config
from selfplay.config.schema import RunConfig
from selfplay.loop.rundir import RunDir, RunDirError, read_jsonl
from selfplay.loop.runtime import Runtime, StageError, open_run_dir
from selfplay.loop.status import status_rows

BASE = {
    "name": "rescue",
    "iterations": 2,
    "policy": {"preset": "nano"},
    "task": {"type": "arithmetic", "level": 1},
    "generation": {"prompts_per_iteration": 8, "n": 2, "max_tokens": 6},
    "judge": {"type": "verifier"},
    "evaluation": {"num_prompts": 0},
}


def _cfg(**sections) -> RunConfig:
    data = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return load_config(data)


def _mid_iteration(rd: RunDir, k: int, stages: list[str]) -> None:
    """The manifest of a run that finished ``stages`` of iteration ``k`` (and is not done with it)."""
    rd.manifest.prepared = True
    for stage in stages:
        rd.mark_stage(k, stage, 1.0, {})
    it = rd.iter_dir(k)
    (it / "checkpoint").mkdir(parents=True, exist_ok=True)
    (it / "checkpoint" / "latest").write_text("step00000004")
    (it / "train_metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n')


# ------------------------------------------------------------------------------- numbers in the schema


def _float_fields(model, prefix=""):
    from selfplay.config.docs import _models_in

    for name, field in model.model_fields.items():
        subs = _models_in(field.annotation)
        for sub in subs:
            yield from _float_fields(sub, f"{prefix}{name}.")
        args = typing.get_args(field.annotation) or (field.annotation,)
        if float in args and not subs:
            yield prefix + name


def test_every_float_field_refuses_inf_and_nan():
    fields = [f for f in _float_fields(RunConfig) if not f.startswith(("task.", "judge."))]
    assert len(fields) >= 15  # learning rates, beta, temperatures, tolerances, resources, ...
    for path in fields:
        for bad in (math.inf, -math.inf, math.nan):
            with pytest.raises(ConfigError) as err:
                load_config(json.loads(json.dumps(BASE)), [f"{path}={yaml.safe_dump(bad).split()[0]}"])
            assert f"{path}: Input should be a finite number" in str(err.value), (path, str(err.value))


# ---------------------------------------------------------------------------------------------- pins


def test_changed_data_file_is_refused_on_resume_naming_it(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": "a"}) + "\n" for i in range(6)))
    cfg = _cfg(task={"type": "dataset", "path": str(data), "reference_column": "answer"}, judge={"type": "sft"})
    rd = open_run_dir(cfg, tmp_path / "run")
    assert set(rd.manifest.inputs) == {"task.path"}
    original = data.read_text()
    data.write_text(original.replace("q3", "q3 (edited)"))
    with pytest.raises(RunDirError, match=r"task.path: .*prompts.jsonl changed since the run started"):
        open_run_dir(cfg, tmp_path / "run")
    data.write_text(original)
    open_run_dir(cfg, tmp_path / "run")  # restored: resumes


def test_file_added_to_the_policy_directory_is_refused(tmp_path, tiny_model_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = _cfg(policy={"path": str(model)})
    open_run_dir(cfg, tmp_path / "run")
    (model / "model-00002.safetensors").write_bytes(b"more weights")
    with pytest.raises(RunDirError, match="policy.path: .*model-00002.safetensors was added"):
        open_run_dir(cfg, tmp_path / "run")


# ------------------------------------------------------------------------------------ recipe changes


def test_any_change_is_taken_when_nothing_was_produced(tmp_path):
    open_run_dir(_cfg(), tmp_path / "run")
    rd = open_run_dir(_cfg(seed=5, **{"task.level": 2}), tmp_path / "run")
    assert rd.manifest.recipe["seed"] == 5 and rd.manifest.recipe["task"]["level"] == 2
    assert "nothing was produced yet" in rd.notes[0]
    assert "seed: 5" in (tmp_path / "run" / "recipe.yaml").read_text()


def test_changed_train_settings_redo_the_iteration_from_reference(tmp_path):
    rd = open_run_dir(_cfg(), tmp_path / "run")
    rd.mark_complete(0, 1)
    _mid_iteration(rd, 1, ["generate", "judge", "pairs", "reference"])
    it = rd.iter_dir(1)
    rd = open_run_dir(_cfg(**{"train.learning_rate": 1e-4}), tmp_path / "run")
    assert list(rd.manifest.iterations["1"].stages) == ["generate", "judge", "pairs"]
    note = rd.notes[0]
    assert "recipe changed (train)" in note and "iteration 1 is redone from stage reference" in note
    assert "iteration 0 keeps the old settings" in note and "stages reference were done" in note
    assert not (it / "checkpoint").exists() and not (it / "train_metrics.jsonl").exists()
    kept = it / "superseded" / "0"
    assert (kept / "checkpoint" / "latest").read_text() == "step00000004"  # moved aside, not deleted
    assert rd.manifest.recipe_changes[-1]["redone_from"] == "reference"
    assert rd.manifest.recipe["train"]["learning_rate"] == 1e-4
    assert rd.resume_notes()[-1].startswith("resuming at iteration 1: iteration 0 complete; stages generate, judge")


def test_changed_pairing_redoes_from_pairs_and_seed_is_refused(tmp_path):
    rd = open_run_dir(_cfg(), tmp_path / "run")
    _mid_iteration(rd, 0, ["generate", "judge", "pairs"])
    rd = open_run_dir(_cfg(**{"pairing.min_margin": 0.5}), tmp_path / "run")
    assert list(rd.manifest.iterations["0"].stages) == ["generate", "judge"]
    with pytest.raises(RunDirError, match="seed shape everything already produced"):
        open_run_dir(_cfg(**{"pairing.min_margin": 0.5}, seed=3), tmp_path / "run")


def test_replica_and_thread_counts_are_not_part_of_a_runs_identity(tmp_path):
    """A run started with today's pinned counts resumes with `auto` (or other counts) and redoes nothing:
    they decide where work runs, not what it computes."""
    rd = open_run_dir(_cfg(**{"generation.replicas": 1, "resources.threads_per_actor": 1}), tmp_path / "run")
    _mid_iteration(rd, 0, ["generate", "judge", "pairs", "reference"])
    rd = open_run_dir(_cfg(**{"generation.replicas": "auto", "resources.threads_per_actor": "auto"}), tmp_path / "run")
    assert list(rd.manifest.iterations["0"].stages) == ["generate", "judge", "pairs", "reference"]
    assert rd.notes == [] and rd.manifest.recipe_changes is None
    assert rd.manifest.recipe["generation"]["replicas"] == "auto"  # the recipe as now written
    rd = open_run_dir(_cfg(**{"generation.replicas": 4, "resources.learners": 2}), tmp_path / "run")
    assert "recipe changed (resources)" in rd.notes[0]  # the learner count is still a change


# ------------------------------------------------------------------------------------ failures, status


def test_status_shows_a_failed_stage_with_its_error_until_the_rerun(tmp_path):
    cfg = _cfg()
    rd = open_run_dir(cfg, tmp_path / "run")
    _mid_iteration(rd, 0, ["generate", "judge"])
    rt = Runtime(cfg, rd)
    with pytest.raises(StageError), rt.stage_context("pairs", 0):
        raise ValueError("no preference pairs (injected)")
    row = [r for r in status_rows(tmp_path / "run") if r["iteration"] == 0][0]
    assert row["state"] == "failed at pairs"
    assert "iteration 0, stage pairs failed: ValueError: no preference pairs (injected)" in row["error"]
    RunDir(tmp_path / "run").clear_failure()  # what the rerun does first
    row = [r for r in status_rows(tmp_path / "run") if r["iteration"] == 0][0]
    assert row["state"] == "at pairs" and "error" not in row


def test_half_written_last_metrics_line_is_skipped_a_bad_middle_line_is_named(tmp_path):
    path = tmp_path / "train_metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.69}\n{"step": 2, "loss": 0.6}\n{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    from selfplay.loop.stages import round_metrics

    assert round_metrics(path)["logged_steps"] == 2
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(RunDirError, match=r"train_metrics.jsonl: line 2 is not valid JSON"):
        read_jsonl(path)


def test_resume_says_what_it_kept(tmp_path):
    rd = open_run_dir(_cfg(), tmp_path / "run")
    assert rd.resume_notes() == []
    rd.manifest.prepared = True
    shards = rd.iter_dir(0) / "generations"
    shards.mkdir(parents=True)
    for i in range(3):
        (shards / f"shard_{i:05d}.parquet").write_bytes(b"x")
    assert rd.resume_notes() == ["resuming at iteration 0: starting policy kept; generate: 3 shard(s) on disk, "
                                 "reused where they match"]


# ------------------------------------------------------------------------------------------ shards


def test_unreadable_shard_is_moved_aside_logged_and_generated_again(tmp_path, caplog):
    from selfplay.generate import Completion, Sampling
    from selfplay.generate.shards import completed_shards, plan_shards, shard_path, write_shard

    prompts = [f"p{i}" for i in range(6)]
    shards = plan_shards(prompts, 2, Sampling(n=2, max_tokens=4), version=0)
    for s in shards:
        write_shard(tmp_path, s, [[Completion(i, j, (5, 6), "ab", "stop", None, 0) for j in range(2)]
                                  for i in range(s.start, s.stop)])
    bad = shard_path(tmp_path, 1)
    bad.write_bytes(bad.read_bytes()[:-40])  # cut short: the parquet footer is gone
    set_aside: list[str] = []
    with caplog.at_level(logging.WARNING, logger="selfplay.generate.shards"):
        assert completed_shards(tmp_path, shards, set_aside) == {0, 2}
    assert set_aside == [str(bad)] and not bad.exists()
    assert str(bad) in caplog.text and "generated again" in caplog.text
    assert len(list(tmp_path.glob("shard_00001.parquet.unreadable-*"))) == 1  # kept for inspection


# ------------------------------------------------------------------------------------------ inputs


def test_three_row_dataset_warns_with_the_count(tmp_path, tiny_model_dir, capsys):
    from selfplay.cli import main

    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i}+1?", "answer": str(i + 1)}) + "\n"
                            for i in range(3)))
    recipe = {**BASE, "policy": {"path": str(tiny_model_dir)}, "judge": {"type": "sft"},
              "generation": {"prompts_per_iteration": 64, "max_tokens": 6},
              "task": {"type": "dataset", "path": str(data), "reference_column": "answer"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["prepare", str(tmp_path / "r.yaml"), "--run-dir", str(tmp_path / "run")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: the task has only 2 training prompts" in err and "prompts_per_iteration is 64" in err


def test_long_prompts_truncate_keeps_the_end_within_the_limit():
    from selfplay.loop.inputs import FittedTask
    from selfplay.models.tokenizer import build_tokenizer
    from selfplay.tasks import Example

    class Task:
        has_verifier = False

        def __init__(self):
            self.items = [Example("a", "x" * 500 + " What is 2+2?"), Example("b", "What is 1+1?"),
                          Example("c", [{"role": "system", "content": "y" * 300},
                                        {"role": "user", "content": "What is 3+3?"}])]

        def train_examples(self, n=None, seed=0):
            return self.items

        def eval_examples(self, n=None, seed=0):
            return []

    tok = build_tokenizer("char")
    fitted = FittedTask(Task(), tok, limit=40, policy="truncate")
    out = {e.id: e for e in fitted.train_examples()}
    assert out["b"].prompt == "What is 1+1?"
    assert out["a"].prompt.endswith("What is 2+2?") and fitted.length(out["a"].prompt) <= 40
    assert fitted.length(out["a"].prompt + "x") > 40 or out["a"].prompt.startswith("x") is False
    assert out["c"].prompt[1]["content"] == "What is 3+3?" and fitted.length(out["c"].prompt) <= 40
    dropped = FittedTask(Task(), tok, limit=40, policy="drop")
    assert [e.id for e in dropped.train_examples()] == ["b"]


def test_verifier_judge_refuses_a_score_outside_0_1():
    from selfplay.judges.base import JudgeError, PromptGroup, run_judge
    from selfplay.judges.rules import VerifierJudge
    from selfplay.tasks import ArithmeticTask

    class Generous(ArithmeticTask):
        def score(self, example, response):
            return 3.0

    with pytest.raises(JudgeError, match=r"Generous.score on prompt 'p1' returned 3.0; a verifier score must be"):
        run_judge(VerifierJudge(Generous(level=1)), [PromptGroup("p1", "1+1=", ["2", "3"], "2")])
