"""`selfplay compare` on hand-written run directories (the formats the driver writes; no model needed).

Runs: one finished, one that evaluates every second iteration (iterations without eval.json), one that
stopped in the middle of an iteration, one that stopped in prepare, and a directory that is not a run.
"""

from __future__ import annotations

import json

import pytest

from selfplay.cli import main
from selfplay.loop.compare import COLUMNS, compare_runs, table_rows, write_plot
from selfplay.loop.rundir import STAGES, RunDir, write_json


def _train_info(margin: float, kl: float | None) -> dict:
    info = {"steps": 4, "kept": 50, "dropped": 0, "truncated": 0, "loss": 0.61, "loss_first": 0.69,
            "reward_accuracy": 0.7, "reward_margin": margin, "chosen_logps": -3.2, "rejected_logps": -5.0,
            "logged_steps": 4}
    return info if kl is None else {**info, "kl": kl}


def make_run(root, name: str, planned: int, accuracies: list[float | None], *, initial: float = 0.2,
             stop_at: tuple[int, str] | None = None, prepared: bool = True):
    """A run directory as the driver leaves it: manifest, initial/eval.json, per iteration the stage
    records, train_metrics.jsonl and (where the iteration was evaluated) eval.json with accuracy and kl."""
    rd = RunDir(root / name)
    rd.create({"name": name, "iterations": planned, "seed": 0}, f"name: {name}\n", {"selfplay": "0"})
    if not prepared:
        return rd.root
    write_json(rd.initial_dir / "eval.json", {"version": 0, "num_prompts": 64, "accuracy": initial,
                                              "mean_reward": initial})
    rd.manifest.prepared = True
    rd.manifest.prepare = {"accuracy": initial, "seconds": 10.0}
    rd.save()
    for k, acc in enumerate(accuracies):
        kl = 0.01 * (k + 1)
        for stage in STAGES:
            if stop_at == (k, stage):
                return rd.root
            info = {"seconds": 1.0}
            if stage == "train":
                info = _train_info(margin=0.5 * (k + 1), kl=kl)
                lines = [json.dumps({"kind": "train", "round": k, "step": s, "loss": 0.6, "reward_margin": 0.5})
                         for s in (1, 2)]
                rd.iter_dir(k).mkdir(parents=True, exist_ok=True)
                (rd.iter_dir(k) / "train_metrics.jsonl").write_text("\n".join(lines) + "\n")
            if stage == "evaluate" and acc is None:
                info = {"skipped": "not an evaluation iteration"}
            rd.mark_stage(k, stage, 2.0, info)
            if stage == "evaluate" and acc is not None:
                write_json(rd.iter_dir(k) / "eval.json", {"version": k + 1, "num_prompts": 64, "accuracy": acc,
                                                          "win_rate": 0.6, "kl": kl})
        rd.mark_complete(k, policy_version=k + 1)
    return rd.root


@pytest.fixture
def runs(tmp_path):
    return [
        make_run(tmp_path, "dpo", 3, [0.3, 0.35, 0.5]),
        make_run(tmp_path, "spin", 4, [None, 0.4, None, 0.25]),  # evaluation.every: 2
        make_run(tmp_path, "crashed", 3, [0.1, 0.6], stop_at=(1, "train")),
        make_run(tmp_path, "early", 2, [], prepared=False),
        tmp_path / "typo",
    ]


def test_summaries_handle_missing_eval_and_unfinished_runs(runs):
    dpo, spin, crashed, early, typo = compare_runs(runs)
    assert dpo["state"] == "done" and dpo["completed"] == 3 and dpo["planned"] == 3
    assert (dpo["start"], dpo["end"], dpo["best"], dpo["best_iteration"]) == (0.2, 0.5, 0.5, 2)
    assert dpo["gain"] == pytest.approx(0.3)
    assert dpo["reward_margin"] == 1.5 and dpo["kl"] == pytest.approx(0.03)
    assert dpo["seconds"] == pytest.approx(10.0 + 3 * 8 * 2.0)

    # Iterations 0 and 2 have no eval.json: no accuracy there, but the train stage's KL is still shown.
    assert [p["accuracy"] for p in spin["points"]] == [0.2, None, 0.4, None, 0.25]
    assert [p["kl"] for p in spin["points"]] == [None, *(pytest.approx(0.01 * k) for k in (1, 2, 3, 4))]
    assert (spin["end"], spin["end_iteration"], spin["best"], spin["best_iteration"]) == (0.25, 3, 0.4, 1)

    # Stopped before training iteration 1: that iteration is listed with nothing measured yet.
    assert crashed["state"] == "unfinished: iter 1 at train" and crashed["completed"] == 1
    assert [p["iteration"] for p in crashed["points"]] == ["initial", 0, 1]
    assert crashed["points"][-1] == {"iteration": 1, "accuracy": None, "reward_margin": None, "kl": None}
    assert crashed["end"] == 0.1 and crashed["reward_margin"] == 0.5

    assert early["state"] == "unfinished: prepare" and early["points"] == [] and early["end"] is None
    assert typo["state"] == "not a run (no manifest.json)" and "planned" not in typo


def test_table_cells(runs):
    rows = {r[0]: dict(zip(COLUMNS, r)) for r in table_rows(compare_runs(runs))}
    assert rows["dpo"]["iters"] == "3/3" and rows["dpo"]["gain"] == "+0.300" and rows["dpo"]["best"] == "0.500 (2)"
    assert rows["spin"]["accuracy by iteration"] == "0.20 - 0.40 - 0.25"
    assert rows["spin"]["gain"] == "+0.050"
    assert rows["crashed"]["iters"] == "1/3" and rows["crashed"]["accuracy by iteration"] == "0.20 0.10 -"
    assert tuple(rows["typo"].values())[1:] == ("not a run (no manifest.json)", *("-",) * (len(COLUMNS) - 2))


def test_same_names_get_their_parent(tmp_path):
    a = make_run(tmp_path / "seed0", "dpo", 1, [0.3])
    b = make_run(tmp_path / "seed1", "dpo", 1, [0.4])
    assert [s["run"] for s in compare_runs([a, b])] == ["seed0/dpo", "seed1/dpo"]


def test_cli_prints_table_json_and_writes_plot(runs, tmp_path, capsys):
    plot = tmp_path / "out" / "cmp.png"
    assert main(["compare", *map(str, runs), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for name in ("dpo", "spin", "crashed", "typo", "unfinished: iter 1 at train", "+0.300"):
        assert name in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["compare", *map(str, runs[:2]), "--json", "--no-plot"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["run"] for d in data] == ["dpo", "spin"] and data[1]["best_iteration"] == 1


def test_cli_fails_when_nothing_is_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), "--no-plot"]) == 1
    assert "not a run" in capsys.readouterr().out


def test_plot_of_a_run_without_iterations(tmp_path):
    only_initial = make_run(tmp_path, "fresh", 2, [])
    path = write_plot(compare_runs([only_initial]), tmp_path / "p.png")
    assert path.stat().st_size > 1000
