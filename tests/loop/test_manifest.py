"""The manifest's typed records: a run directory written before they existed still opens, resumes and
shows in status, report and compare; what one stage tells a later one is a typed field; a bad field
is an error naming the file and the field. Run directories written by hand (no Ray, no model)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from selfplay.loop import stages
from selfplay.loop.compare import run_summary
from selfplay.loop.manifest import STAGES, PairsRecord, Stage, TrainRecord
from selfplay.loop.report import write_report
from selfplay.loop.rundir import RunDir, RunDirError, write_json
from selfplay.loop.status import status_rows


def _stage(**info) -> dict:
    return {**info, "seconds": 2.0}  # older versions wrote `seconds` last


# A manifest in the shape the versions before the typed records wrote: no `cores`, no `initial_policy`,
# no `inputs`, no `wall_seconds`; a warm start; iteration 0 complete, iteration 1 without pairs and
# complete, iteration 2 interrupted after its pairs; keys no model names (`legacy_note`, `max_diff`).
OLD = {
    "format": 1,
    "created": "2026-10-01T12:00:00+0000",
    "recipe": {"name": "old", "seed": 0, "iterations": 4},
    "versions": {"selfplay": "0.1.0"},
    "prepared": True,
    "iterations": {
        "0": {"stages": {
            "generate": _stage(prompts=8, samples=32, tokens=900, tokens_per_s=450.0),
            "judge": _stage(mean_score=0.25),
            "pairs": _stage(pairs=6, prompts=8, no_pair_all_correct=1, no_pair_all_wrong=1),
            "reference": _stage(reference="previous", pairs=6),
            "train": _stage(steps=3, loss=0.61, reward_accuracy=0.75, reward_margin=0.12, rejected_drift=0.05,
                            kept=6, policy="iter_000/policy"),
            "export": _stage(policy="iter_000/policy"),
            "sync": _stage(version=1, method="object_store", max_diff=0.0),
            "evaluate": _stage(accuracy=0.3)}, "complete": True, "policy_version": 1},
        "1": {"stages": {
            "generate": _stage(prompts=8, samples=32),
            "judge": _stage(mean_score=1.0),
            "pairs": _stage(pairs=0, prompts=8, no_pairs=True, no_pair_all_correct=8, hint="all correct"),
            "reference": _stage(skipped="no pairs"),
            "train": _stage(skipped="no pairs", steps=0),
            "export": _stage(policy="iter_001/policy", unchanged_from="iter_000/policy"),
            "sync": _stage(version=2, method="unchanged policy reloaded from disk"),
            "evaluate": _stage(accuracy=0.35)}, "complete": True, "policy_version": 2},
        "2": {"stages": {
            "generate": _stage(prompts=8, samples=32),
            "judge": _stage(mean_score=0.5),
            "pairs": _stage(pairs=5, prompts=8)}, "complete": False},
    },
    "prepare": {"warmstart": {"steps": 4, "loss": 1.5}, "accuracy": 0.2, "seconds": 30.0},
    "legacy_note": "a key no version of the models names",
}


@pytest.fixture()
def old_run(tmp_path) -> Path:
    root = tmp_path / "old-run"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps(OLD, indent=2) + "\n")
    (root / "initial").mkdir()
    write_json(root / "initial" / "eval.json", {"version": 0, "num_prompts": 4, "accuracy": 0.2})
    for k, acc in ((0, 0.3), (1, 0.35)):
        (root / f"iter_{k:03d}").mkdir()
        write_json(root / f"iter_{k:03d}" / "eval.json", {"version": k + 1, "num_prompts": 4, "accuracy": acc})
    (root / "iter_002").mkdir()
    return root


def test_an_old_manifest_resumes_where_it_stopped(old_run):
    rd = RunDir(old_run)
    assert rd.completed_iterations() == [0, 1] and rd.next_iteration() == 2
    assert [s for s in STAGES if rd.stage_done(2, s)] == ["generate", "judge", "pairs"]
    assert rd.resume_notes() == ["resuming at iteration 2: iterations 0, 1 complete; stages generate, judge, "
                                 "pairs kept"]
    rt = SimpleNamespace(rd=rd, cfg=SimpleNamespace(seed=0))
    assert stages.rounds_before(rt, 2) == (2, 7)  # the warm start's 4 steps and iteration 0's 3
    assert stages.no_pairs(rt, 1) and not stages.no_pairs(rt, 0)
    assert stages.solved_share(rt, 1) == 1.0 and stages.solved_share(rt, 0) == 1 / 8
    assert stages.initial_policy(rt) == rd.initial_dir / "policy"  # no `initial_policy` key: the default


def test_an_old_manifest_shows_in_status_compare_and_report(old_run):
    rows = status_rows(old_run)
    assert [(r["iteration"], r["state"], r.get("pairs")) for r in rows] == [
        ("initial", "done", None), (0, "done", 6), (1, "no pairs", 0), (2, "at reference", 5)]
    assert rows[1]["loss"] == 0.61 and rows[1]["rejected_drift"] == 0.05 and rows[1]["seconds"] == 16
    summary = run_summary(old_run)
    assert summary["state"] == "unfinished: iter 2 at reference" and summary["completed"] == 2
    assert summary["end"] == 0.35 and summary["reward_margin"] == 0.12 and summary["seconds"] == 30.0 + 19 * 2.0
    written = write_report(old_run, old_run / "report")
    assert {p.name for p in written} == {"eval.png", "stage_times.png"}


def test_an_old_manifest_is_written_back_as_it_was(old_run):
    """Saving what was loaded changes no key and no value: a newer driver resuming an old run keeps its record."""
    rd = RunDir(old_run)
    rd.save()
    assert json.loads((old_run / "manifest.json").read_text()) == OLD


def test_stages_hand_each_other_typed_records(tmp_path):
    rd = RunDir(tmp_path)
    rd.create({"iterations": 1}, "", {})
    rd.mark_stage(0, Stage.PAIRS, 1.5, PairsRecord(pairs=0, prompts=4, no_pairs=True, no_pair_all_correct=4,
                                                   no_pair_all_wrong=0))
    rd.mark_stage(0, Stage.TRAIN, 0.1, {"skipped": "no pairs", "steps": 0})
    rd.record_failure(0, Stage.EXPORT, "OSError: disk full")
    stored = json.loads((tmp_path / "manifest.json").read_text())
    assert stored["iterations"]["0"]["stages"] == {
        "pairs": {"seconds": 1.5, "pairs": 0, "prompts": 4, "no_pairs": True, "no_pair_all_correct": 4,
                  "no_pair_all_wrong": 0},  # extra figures are kept as the stage reported them
        "train": {"seconds": 0.1, "skipped": "no pairs", "steps": 0}}
    assert stored["failed"]["stage"] == "export" and stored["failed"]["iteration"] == 0
    reread = RunDir(tmp_path)
    pairs, train = reread.stage_record(0, Stage.PAIRS), reread.stage_record(0, Stage.TRAIN)
    assert isinstance(pairs, PairsRecord) and pairs.no_pairs and pairs.no_pair_all_correct == 4
    assert isinstance(train, TrainRecord) and train.steps == 0 and train.rejected_drift is None
    reread.clear_failure()
    assert "failed" not in json.loads((tmp_path / "manifest.json").read_text())


def test_a_field_of_the_wrong_type_names_the_file_and_the_field(tmp_path):
    bad = json.loads(json.dumps(OLD))
    bad["iterations"]["0"]["stages"]["train"]["steps"] = "many"
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(RunDirError, match=r"manifest\.json: iterations\.0\.stages: .*train\.steps: Input should be"):
        RunDir(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RunDirError, match="is not valid JSON"):
        RunDir(tmp_path)
