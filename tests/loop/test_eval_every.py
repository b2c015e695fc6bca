"""`evaluation.every`: which iterations are evaluated, and status/report on a run where some are not."""

from __future__ import annotations

import json
from types import SimpleNamespace

from selfplay.config import load_config
from selfplay.loop import stages
from selfplay.loop.report import write_report
from selfplay.loop.rundir import STAGES, RunDir, write_json
from selfplay.loop.status import status_rows

RECIPE = {"policy": {"preset": "nano"}, "task": {"type": "arithmetic"}, "judge": {"type": "verifier"},
          "iterations": 5, "evaluation": {"every": 2}}


def test_every_n_iterations_and_always_the_last():
    cfg = load_config(RECIPE)
    assert [k for k in range(5) if stages.eval_due(cfg, k)] == [1, 3, 4]
    every1 = load_config({**RECIPE, "evaluation": {"every": 1}})
    assert all(stages.eval_due(every1, k) for k in range(5))


def _not_started(*args):
    raise AssertionError("a skipped evaluation starts no part")


def test_a_skipped_evaluation_does_no_work_and_status_and_report_show_gaps(tmp_path):
    cfg = load_config(RECIPE)
    rd = RunDir(tmp_path / "run")
    rd.create({}, "", {})
    rd.manifest.prepared = True
    rd.initial_dir.mkdir()
    write_json(rd.initial_dir / "eval.json", {"version": 0, "accuracy": 0.25})
    # The run-time holds only what a skipped evaluation may touch: the config and the run directory.
    rt = SimpleNamespace(cfg=cfg, rd=rd)
    for k in range(3):
        for stage in STAGES[:-1]:
            rd.mark_stage(k, stage, 1.0, {"pairs": 10, "loss": 0.6, "rejected_drift": 0.1 * k}
                          if stage in ("pairs", "train") else {})
        if stages.eval_due(cfg, k):
            rd.iter_dir(k).mkdir(parents=True)
            write_json(rd.iter_dir(k) / "eval.json", {"version": k + 1, "accuracy": 0.5})
            info = {"accuracy": 0.5}
        else:
            info = stages.evaluate(rt, stages.iteration(rt, k), generators=_not_started, judge=_not_started)
            assert info == {"skipped": "evaluation.every=2"}
            assert not (rd.iter_dir(k) / "eval.json").exists()
        rd.mark_stage(k, "evaluate", 1.0, info)
        rd.mark_complete(k, k + 1)
    rows = status_rows(rd.root)
    assert [r["accuracy"] for r in rows] == [0.25, None, 0.5, None]
    assert [r["rejected_drift"] for r in rows[1:]] == [0.0, 0.1, 0.2]
    written = write_report(rd.root)
    assert {p.name for p in written} >= {"eval.png", "stage_times.png"}
    assert json.loads((rd.iter_dir(1) / "eval.json").read_text())["accuracy"] == 0.5
