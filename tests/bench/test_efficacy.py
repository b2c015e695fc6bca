"""bench.efficacy without running it: the validation/test split, every arm as a valid recipe, the search
grid, the tuned-settings file, run reuse keys, and the table and claims from hand-made run records
(where the verdicts are known by hand)."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import efficacy_runs
from bench.efficacy import TABLE_BUDGET, Plan, main, task_arms, task_rows, tune
from bench.efficacy_arms import (
    ALL_ARMS,
    PREFERENCE_ARMS,
    QUICK_ARMS,
    REDUCED_ARMS,
    SPACES,
    TASKS,
    arm_overrides,
    describe,
    settings_overrides,
)
from bench.efficacy_report import across_tasks, best_by_validation, claims, summarise, table_lines
from bench.efficacy_spin import ITERATIONS, plateau_iteration, pool_size
from bench.efficacy_split import run_split_scores, split_of, split_scores
from bench.efficacy_tune import (
    STAGES,
    TUNE_BUDGET,
    best_preference_arm,
    best_trial,
    load_tuned,
    max_trials,
    record_arm,
    stage_settings,
    tuned_settings,
    write_tuned,
)
from selfplay.config import load_config
from selfplay.loop.factory import build_task_from_config
from selfplay.tasks import SortingTask

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
START = ["policy.path=/models/start", "policy.preset=null", "policy.warmstart=null"]


# ------------------------------------------------------------------------------------------- the split
def test_split_is_half_and_half_fixed_per_problem_and_the_same_for_every_seed():
    task = SortingTask(min_len=2, max_len=4, max_value=99)
    seed0, seed1 = task.eval_examples(600, seed=0), task.eval_examples(600, seed=1)
    halves = [split_of(ex.id) for ex in seed0]
    assert 0.42 < halves.count("validation") / len(halves) < 0.58
    assert [split_of(ex.id) for ex in seed0] == halves  # deterministic
    shared = {ex.id for ex in seed0} & {ex.id for ex in seed1}
    assert shared  # seeds sample overlapping held-out problems: each keeps one side in both
    by_id = {ex.id: split_of(ex.id) for ex in seed0}
    assert all(split_of(i) == by_id[i] for i in shared)


def test_split_scores_count_only_scored_prompts():
    ids = [f"sort-{i:04d}" for i in range(40)]
    rows = [(i, 1.0 if n % 2 else 0.0) for n, i in enumerate(ids)] + [("sort-none", None)]
    out = split_scores(rows)
    assert out["validation"]["n"] + out["test"]["n"] == 40
    for half in ("validation", "test"):
        mine = [s for i, s in rows if s is not None and split_of(i) == half]
        assert out[half]["accuracy"] == pytest.approx(sum(mine) / len(mine))
    assert split_scores([])["test"] == {"accuracy": None, "n": 0}


def _eval_table(path: Path, scores: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{"prompt_id": i, "response": "x", "verifier_score": s}
                                         for i, s in scores.items()]), path)


def test_run_split_scores_reads_the_start_and_the_last_evaluated_iteration(tmp_path):
    ids = [f"sort-{i:04d}" for i in range(64)]
    test_ids = [i for i in ids if split_of(i) == "test"]
    _eval_table(tmp_path / "initial" / "eval_generations.parquet", {i: 0.0 for i in ids})
    _eval_table(tmp_path / "iter_000" / "eval_generations.parquet", {i: 1.0 for i in ids})
    _eval_table(tmp_path / "iter_001" / "eval_generations.parquet", {i: float(i in test_ids) for i in ids})
    (tmp_path / "iter_002").mkdir()  # not evaluated: the last *evaluated* iteration counts
    out = run_split_scores(tmp_path)
    assert (out["start_validation"], out["start_test"]) == (0.0, 0.0)
    assert (out["validation"], out["test"]) == (0.0, 1.0)
    assert out["n_test"] == len(test_ids) and out["n_validation"] == len(ids) - len(test_ids)


# ------------------------------------------------------------------------------------------- the arms
@pytest.mark.parametrize("recipe", ["quickstart.yaml", "spin_quickstart.yaml"])
def test_every_arm_at_every_searched_setting_is_a_valid_recipe_with_the_same_budget(recipe):
    path = ROOT / "recipes" / recipe
    base = load_config(path, list(TABLE_BUDGET))
    samples = lambda c: c.iterations * c.generation.prompts_per_iteration * c.generation.n
    for arm in ALL_ARMS:
        if recipe.startswith("spin") and arm not in ("sft", "spin"):
            with pytest.raises(ValueError, match="need a verifier"):
                arm_overrides(arm, base)
            continue
        space = SPACES[arm]
        points = [space.default(), {**space.default(), "lr": space.lr[0], "epochs": space.epochs[-1]}]
        if space.beta is not None:
            points.append({**space.default(), "beta": space.beta[-1]})
        for settings in points:
            cfg = load_config(path, [*TABLE_BUDGET, *START, *arm_overrides(arm, base),
                                     *settings_overrides(arm, settings)])
            assert samples(cfg) == samples(base), arm
            assert cfg.policy.path == "/models/start" and cfg.policy.warmstart is None
            assert cfg.train.learning_rate == settings["lr"] and cfg.train.epochs == settings["epochs"]
            if "beta" in settings:
                assert cfg.train.loss.beta == settings["beta"]
    cfg = lambda arm, **s: load_config(path, [*START, *arm_overrides(arm, base),
                                              *settings_overrides(arm, {**SPACES[arm].default(), **s})])
    assert (cfg("sft").pairing, cfg("sft").judge) == (cfg("spin").pairing, cfg("spin").judge)  # same rows
    assert (cfg("sft").train.loss.type, cfg("spin").train.loss.type) == ("sft", "sigmoid")
    if not recipe.startswith("spin"):
        assert (cfg("rft").pairing_strategy, cfg("rft").train.loss.type) == ("best", "sft")
        assert cfg("dpo_offline").iterations == 1 and cfg("dpo_offline").train.reference == "initial"
        assert cfg("simpo", beta=5.0).train.loss.resolved_params() == {"gamma": 2.5}  # gamma/beta stays 0.5
        rpo, dpo = cfg("rpo"), cfg("dpo_previous")
        assert (rpo.train.loss.nll_weight, dpo.train.loss.nll_weight) == (1.0, 0.0)
        assert rpo.train.loss.type == dpo.train.loss.type == "sigmoid" and rpo.train.reference == "previous"


def test_settings_are_named_in_errors_and_described_compactly():
    with pytest.raises(ValueError, match=r"arm dpop: unknown setting\(s\) \['learning_rate'\]"):
        settings_overrides("dpop", {"learning_rate": 1e-4})
    assert describe({"lr": 1e-4, "epochs": 2, "beta": 0.5, "nll_weight": 1.0}) == "lr 1e-04 ep 2 β 0.5 nll 1"
    assert describe({"lr": 3e-3, "epochs": 1}) == "lr 3e-03 ep 1" and describe(None) == "-"


def test_task_rows_and_their_arms():
    assert [r.name for r in task_rows(["all"], None)] == ["quickstart", "rg_spell_backward", "rg_palindrome"]
    assert task_rows([], str(QUICKSTART))[0].name == "quickstart"  # the recipe of a known task is that task
    adhoc = task_rows([], str(ROOT / "recipes" / "spin_quickstart.yaml"))[0]
    assert (adhoc.name, adhoc.eval_prompts, adhoc.arms) == ("spin_quickstart", None, ALL_ARMS)
    with pytest.raises(SystemExit, match="unknown"):
        task_rows(["nope"], None)
    args = lambda **kw: argparse.Namespace(**{"arms": None, "quick": False, **kw})
    tuned = {"tasks": {"quickstart": {"arms": {"ipo": {"settings": {}, "validation": 0.5},
                                               "dpop": {"settings": {}, "validation": 0.4},
                                               "dpo_previous": {"settings": {}, "validation": 0.9}}}}}
    rg = TASKS["rg_spell_backward"]
    # the best *other* preference arm by the quick start's validation (plain DPO is in the set anyway)
    assert task_arms(rg, tuned, args()) == ("sft", "rft", "dpo_previous", "ipo", "spin")
    assert task_arms(rg, {"tasks": {}}, args()) == ("sft", "rft", "dpo_previous", "dpop", "spin")
    assert set(task_arms(TASKS["quickstart"], tuned, args(quick=True))) == set(QUICK_ARMS)
    assert task_arms(rg, tuned, args(arms=["kto"])) == ("kto",)
    assert len(REDUCED_ARMS) == 5


# ---------------------------------------------------------------------------------------- the search
def _search(arm: str, validation) -> list[dict]:
    """Every stage of the search with a made-up validation accuracy per setting."""
    trials: list[dict] = []
    for stage in STAGES:
        for s in stage_settings(SPACES[arm], stage, trials):
            trials.append({"settings": s, "stage": stage, "returncode": 0, "validation": validation(s)})
    return trials


@pytest.mark.parametrize("arm", ALL_ARMS)
def test_each_search_covers_the_issues_ranges_in_6_to_12_runs(arm):
    space = SPACES[arm]
    assert max(space.lr) / min(space.lr) >= 30
    assert 8 <= max_trials(space) <= 14  # 6-12, and 2 more when the best learning rate is on the grid's edge
    trials = _search(arm, lambda s: 0.1)
    tried = [t["settings"] for t in trials]
    assert 6 <= len(tried) <= 12  # all equal: a tie on the edge does not extend the grid
    assert len({tuple(sorted(s.items())) for s in tried}) == len(tried)  # no point run twice
    assert {s["epochs"] for s in tried} == set(space.epochs)
    if space.beta is not None:
        assert {s["beta"] for s in tried} == set(space.beta)
    assert best_trial(trials)["settings"] == tried[0]  # all equal: the earliest wins
    nll = {s.get("nll_weight") for s in tried}
    assert nll == ({1.0} if arm == "rpo" else {0.0} if arm in PREFERENCE_ARMS and arm != "kto" else {None})


def test_search_finds_the_best_point_coarse_to_fine():
    # a smooth optimum at lr 2e-4, 1 epoch, beta 0.5: coarse finds 3e-4, the axes 1 epoch and beta 0.5,
    # fine combines them and tries half and twice the learning rate
    score = lambda s: 1.0 - abs(math.log10(s["lr"] / 2e-4)) - 0.1 * abs(s["epochs"] - 1) - abs(s["beta"] - 0.5)
    trials = _search("dpo_previous", score)
    stages = [t["stage"] for t in trials]
    assert stages.count("coarse") == 5 and stages.count("axes") == 4 and stages.count("fine") == 3
    assert [t["settings"] for t in trials if t["stage"] == "fine"] == [
        {"lr": lr, "epochs": 1, "beta": 0.5, "nll_weight": 0.0} for lr in (3e-4, 1.5e-4, 6e-4)]
    assert best_trial(trials)["settings"] == {"lr": 1.5e-4, "epochs": 1, "beta": 0.5, "nll_weight": 0.0}


def test_an_optimum_on_the_grids_edge_extends_the_grid_a_decade():
    # accuracy falls with the learning rate over the whole grid (what plain DPO did on the quick start):
    # the edge stage tries a third and a tenth of the smallest lr, and the later stages start from there
    score = lambda s: -math.log10(s["lr"]) - 0.01 * abs(s["epochs"] - 2)
    trials = _search("dpo_previous", score)
    edge = [t["settings"]["lr"] for t in trials if t["stage"] == "edge"]
    assert edge == pytest.approx([1e-5 / 3, 1e-6])
    assert [t["settings"]["lr"] for t in trials if t["stage"] == "axes"] == pytest.approx([1e-6] * 4)
    assert len(trials) <= max_trials(SPACES["dpo_previous"])
    # the other way round on sft's grid, and no edge runs when the optimum is inside the grid
    up = _search("sft", lambda s: math.log10(s["lr"]))
    assert [t["settings"]["lr"] for t in up if t["stage"] == "edge"] == pytest.approx([9e-3, 3e-2])
    inside = _search("sft", lambda s: -abs(math.log10(s["lr"] / 3e-4)))
    assert not [t for t in inside if t["stage"] == "edge"]


def test_failed_or_unscored_runs_are_never_chosen():
    trials = [{"settings": {"lr": 1e-3}, "returncode": 1, "validation": 0.9},
              {"settings": {"lr": 1e-4}, "returncode": 0, "validation": None},
              {"settings": {"lr": 3e-4}, "returncode": 0, "validation": 0.2}]
    assert best_trial(trials)["settings"] == {"lr": 3e-4}
    assert best_trial(trials[:2]) is None
    assert stage_settings(SPACES["sft"], "axes", [{**t, "stage": "coarse"} for t in trials[:2]]) == []
    with pytest.raises(ValueError, match="unknown stage"):
        stage_settings(SPACES["sft"], "medium", trials)


# ------------------------------------------------------------------------------------ the tuned file
def test_tuned_file_round_trip_and_the_best_arm_by_validation(tmp_path):
    path = tmp_path / "tuned.yaml"
    assert load_tuned(path) == {"tasks": {}}
    data = load_tuned(path)
    info = {"recipe": "recipes/quickstart.yaml", "overrides": ["evaluation.num_prompts=1000"],
            "budget": list(TUNE_BUDGET), "seed": 0, "start_validation": 0.25}
    dpo = _search("dpo_previous", lambda s: 0.3 + s["beta"] / 10)
    sft = _search("sft", lambda s: 0.4 - s["lr"])
    assert record_arm(data, "quickstart", info, "dpo_previous", dpo)["settings"]["beta"] == 0.5
    record_arm(data, "quickstart", info, "sft", sft)
    assert record_arm(data, "quickstart", info, "kto", [{"settings": {}, "returncode": 1}]) is None
    write_tuned(data, path)
    text = path.read_text()
    assert text.startswith("# Settings of each bench.efficacy arm") and "test" not in text.split("\n", 6)[-1]
    back = load_tuned(path)
    assert back == json.loads(json.dumps(data))  # what was written is what is read
    assert tuned_settings(back, "quickstart", "dpo_previous") == {"lr": 1e-5, "epochs": 2, "beta": 0.5,
                                                                  "nll_weight": 0.0}
    assert tuned_settings(back, "quickstart", "kto") is None
    assert tuned_settings(back, "rg_spell_backward", "sft") is None
    assert len(back["tasks"]["quickstart"]["arms"]["sft"]["trials"]) == len(sft)
    assert best_preference_arm(back, "quickstart", PREFERENCE_ARMS) == "dpo_previous"
    # a second --tune of another arm keeps the first's entries
    again = load_tuned(path)
    record_arm(again, "quickstart", info, "ipo", _search("ipo", lambda s: 0.9))
    write_tuned(again, path)
    assert set(load_tuned(path)["tasks"]["quickstart"]["arms"]) == {"dpo_previous", "sft", "ipo"}
    path.write_text("tasks:\n  quickstart:\n    arms:\n      dpop: {validation: 0.3}\n")
    with pytest.raises(ValueError, match=r"tasks.quickstart.arms.dpop: needs a `settings` mapping"):
        load_tuned(path)


# --------------------------------------------------------------------------------------- reuse keys
def test_run_keys_change_with_any_setting_and_only_then(tmp_path):
    base = [*TABLE_BUDGET, *START, "seed=0"]
    key = efficacy_runs.run_key(QUICKSTART, base)
    assert efficacy_runs.run_key(QUICKSTART, list(reversed(base))) == key  # order of independent overrides
    assert efficacy_runs.run_key(QUICKSTART, [*base, "train.loss.type=dpop"]) == key  # the recipe's own value
    assert efficacy_runs.run_key(QUICKSTART, [*base, "train.learning_rate=1e-4"]) != key
    assert efficacy_runs.run_key(QUICKSTART, [*base[:-1], "seed=1"]) != key
    copy = tmp_path / "quickstart.yaml"
    shutil.copy(QUICKSTART, copy)
    assert efficacy_runs.run_key(copy, base) == key
    copy.write_text(QUICKSTART.read_text().replace("epochs: 3", "epochs: 2"))
    assert efficacy_runs.run_key(copy, base) != key  # an edited recipe file is a new run


def test_a_finished_run_is_reused_and_a_changed_setting_is_not(tmp_path, monkeypatch):
    def no_process(*a, **k):  # injected: starting a process here means the cache was missed
        raise RuntimeError("selfplay started")

    monkeypatch.setattr(efficacy_runs, "_selfplay", no_process)
    start = {"policy": "/models/start"}
    sets = [*TABLE_BUDGET, *START, "seed=0", "train.learning_rate=1e-4"]
    run_dir = tmp_path / "runs" / f"dpop-s0-{efficacy_runs.run_key(QUICKSTART, sets)}"
    run_dir.parent.mkdir(parents=True)
    record = {"version": efficacy_runs.RESULT_VERSION, "full": True, "returncode": 0, "test": 0.4, "wall_s": 9.0}
    run_dir.with_name(run_dir.name + ".result.json").write_text(json.dumps(record))
    got = efficacy_runs.run_arm(QUICKSTART, tmp_path, "dpop-s0", sets, start, full=True, info={"arm": "dpop"})
    assert got["reused"] and got["test"] == 0.4 and got["arm"] == "dpop"
    got = efficacy_runs.run_arm(QUICKSTART, tmp_path, "dpop-s0", sets, start, full=False)  # less is reused too
    assert got["reused"]
    changed = [*sets[:-1], "train.learning_rate=3e-4"]
    with pytest.raises(RuntimeError, match="selfplay started"):
        efficacy_runs.run_arm(QUICKSTART, tmp_path, "dpop-s0", changed, start, full=True)
    record.update(full=False)  # a tuning run's record lacks the KL and log-prob: the table measures again
    run_dir.with_name(run_dir.name + ".result.json").write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match="selfplay started"):
        efficacy_runs.run_arm(QUICKSTART, tmp_path, "dpop-s0", sets, start, full=True)


# ----------------------------------------------------------------------------------- table and claims
def _run(arm: str, seed: int, test: float, dchosen: float = 0.0, rc: int = 0, validation: float | None = None,
         start: float = 0.25) -> dict:
    return {"arm": arm, "seed": seed, "returncode": rc, "test": test, "start_test": start,
            "validation": test if validation is None else validation, "kl_to_start": 0.01,
            "chosen_logp_change": dchosen, "steps": 30, "wall_s": 100.0,
            "settings": {"lr": 1e-4, "epochs": 1, "beta": 0.1, "nll_weight": 0.0}, "tuned": arm != "kto"}


def test_table_and_claims_follow_the_numbers():
    results = []
    for seed, noise in enumerate((0.0, 0.01, -0.01)):
        results += [_run("dpo_offline", seed, 0.30 + noise, -1.0), _run("dpo_previous", seed, 0.50 + noise, -2.0),
                    _run("dpo_initial", seed, 0.30 - noise, -1.5), _run("dpop", seed, 0.45 + noise, 0.3),
                    _run("spin", seed, 0.20 + noise, 0.5), _run("sft", seed, 0.40 + noise, 0.8),
                    _run("rft", seed, 0.35 + noise, 0.5), _run("rpo", seed, 0.36 + noise, 0.1),
                    _run("kto", seed, 0.26 + 2 * noise)]
    results.append(_run("sft", 3, 0.0, 0.0, rc=1))  # a failed seed is counted, not averaged
    summary = summarise(results)
    assert summary["dpo_previous"]["test"]["mean"] == pytest.approx(0.50)
    assert summary["dpo_previous"]["test"]["sd"] == pytest.approx(0.01)
    assert summary["sft"]["seeds"] == 3 and summary["sft"]["failed"] == 1
    assert summary["sft"]["test"]["min"] == pytest.approx(0.39)
    assert summary["kto"]["gain"]["min"] == pytest.approx(-0.01)
    lines = table_lines(["dpo_previous", "sft", "kto", "ipo"], summary)
    cells = [c.strip() for c in lines[2].split("  ") if c.strip()]
    assert cells[:6] == ["dpo_previous", "lr 1e-04 ep 1 β 0.1", "3", "0.500 ± 0.010", "0.490", "+0.240"]
    assert "3 (1 failed)" in lines[3] and "(untuned)" in lines[4] and len(lines) == 5  # ipo: no row
    assert "validation" not in "\n".join(lines)

    out = "\n".join(claims(results, "previous"))
    assert "- dpo_previous ends above the start on every seed: smallest gain +0.240 over 3 seed(s) -> HELD" in out
    assert "- kto ends above the start on every seed: smallest gain -0.010 over 3 seed(s) -> NOT HELD" in out
    assert "(dpo_previous) beats offline DPO: test +0.200 -> HELD beyond seed noise" in out
    assert "(dpo_initial) beats offline DPO: test +0.000 -> NOT HELD (within seed noise)" in out
    assert "dpo_previous -2.000, dpop +0.300 -> HELD" in out
    assert "- Iterative RPO beats RFT at equal samples: test +0.010 -> HELD (within seed noise)" in out
    assert "the best preference arm by validation (dpo_previous) beats RFT at equal samples: test +0.150" in out
    assert "SPIN vs more SFT from this start (not the paper's regime; see --spin-regime): test -0.200" in out


def test_the_best_arm_is_chosen_on_validation_even_when_test_disagrees():
    results = [_run("dpop", s, 0.30, validation=0.50) for s in range(3)]
    results += [_run("ipo", s, 0.45, validation=0.40) for s in range(3)]
    results += [_run("rft", s, 0.35 + s / 100) for s in range(3)]
    assert best_by_validation(summarise(results), PREFERENCE_ARMS) == "dpop"
    out = "\n".join(claims(results))
    assert "the best preference arm by validation (dpop) beats RFT at equal samples: test -0.060 -> NOT HELD" in out
    assert "Iterative RPO beats RFT at equal samples: not measured" in out


def test_the_cross_task_goal_counts_tasks_where_the_best_arm_beats_rft_beyond_noise():
    wins = [_run("dpop", s, 0.40 + s / 100, validation=0.5) for s in range(3)] + [_run("rft", s, 0.30 + s / 100)
                                                                                for s in range(3)]
    noisy = [_run("rpo", s, 0.36 + s / 10) for s in range(3)] + [_run("rft", s, 0.35) for s in range(3)]
    loses = [_run("ipo", s, 0.20) for s in range(3)] + [_run("rft", s, 0.30 + s / 100) for s in range(3)]
    out = across_tasks({"a": wins, "b": noisy, "c": loses, "d": [_run("rft", 0, 0.3)]})
    assert out[1] == "- a: best preference arm dpop vs RFT +0.100 -> HELD beyond seed noise"
    assert out[2] == "- b: best preference arm rpo vs RFT +0.110 -> HELD (within seed noise)"
    assert out[3].startswith("- c: best preference arm ipo vs RFT -0.110 -> NOT HELD")
    assert out[4] == "- d: best preference arm vs RFT not measured (arms missing or failed)"
    assert out[5] == ("- the best preference arm beats RFT beyond seed noise on 1 of 3 measured task(s) "
                      "(goal: 2) -> NOT HELD")


def test_the_plateau_is_the_first_round_within_tolerance_of_the_best():
    assert plateau_iteration([0.40, 0.55, 0.595, 0.60, 0.58]) == 2
    assert plateau_iteration([None, 0.3, 0.2]) == 1
    assert plateau_iteration([]) is None and plateau_iteration([None]) is None


def test_the_spin_regime_keeps_one_fixed_prompt_set_and_every_task_row_loads():
    for row in TASKS.values():
        regime = ["generation.prompt_source=fixed", f"generation.prompts_per_iteration={row.spin_prompts}",
                  f"iterations={ITERATIONS}"]
        cfg = load_config(ROOT / row.recipe, [*row.eval_overrides(), *row.overrides, *regime])
        assert pool_size(cfg) == 1000, row.name  # plateau and later runs draw the same pool, so the same set
        assert cfg.judge.type == "verifier", row.name
        task = build_task_from_config(cfg)  # the row's task builds (a config the dataset rejects fails here)
        assert len(task.eval_examples(row.eval_prompts)) == row.eval_prompts, row.name
        for arm in row.arms:
            if arm in ALL_ARMS:
                load_config(ROOT / row.recipe, [*row.overrides, *arm_overrides(arm, cfg)])
    assert TASKS["rg_spell_backward"].overrides[0] == "task.name=spell_backward"


def test_dry_runs_count_the_runs_of_the_table_the_tuning_and_the_quick_check(tmp_path, capsys):
    tuned = tmp_path / "tuned.yaml"
    data = load_tuned(tuned)
    record_arm(data, "quickstart", {}, "kto", _search("kto", lambda s: 0.5))
    write_tuned(data, tuned)
    common = ["--dry-run", "--tuned", str(tuned), "--out", str(tmp_path / "out")]
    assert main(["--task", "all", *common]) == 0
    out = capsys.readouterr().out
    assert "runs: 63, 3 seed(s)" in out  # 11 arms x 3 seeds + 2 tasks x 5 arms x 3 seeds
    # kto is the best other preference arm (tuned on quickstart), untuned on the reasoning-gym task itself
    assert "rg_palindrome kto: 3 run(s), lr 1e-04 ep 2 β 0.1 (untuned)" in out
    assert "quickstart kto: 3 run(s), lr 1e-05 ep 2 β 0.1\n" in out
    assert "quickstart ipo: 3 run(s), lr 1e-04 ep 2 β 0.1 (untuned)" in out
    assert main(["--tune", *common]) == 0
    assert "runs: at most 148, 1 seed(s)" in capsys.readouterr().out  # 2 x 11 + 9 x 14 (with the edge stage)
    assert main(["--quick", *common]) == 0
    assert "runs: 6, 1 seed(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="seed 0 only"):
        main(["--tune", "--seeds", "1", *common])
    assert not (tmp_path / "out").exists()  # nothing ran


def test_tune_runs_the_stages_in_order_and_writes_every_arms_choice(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    args = argparse.Namespace(out=str(tmp_path / "out"), common=[], jobs=2)
    plan = Plan(TASKS["quickstart"], args, TUNE_BUDGET)
    plan.starts = {0: {"validation": 0.2}}
    (tmp_path / "out" / "quickstart").mkdir(parents=True)
    made = []

    def run(p, arm, settings, stage):  # validation peaks at lr 3e-3 for sft and 3e-5 for ipo, 3 epochs
        made.append((arm, stage))
        best = 3e-3 if arm == "sft" else 3e-5
        return {"task": p.name, "arm": arm, "seed": 0, "settings": settings, "stage": stage, "returncode": 0,
                "validation": 0.5 - abs(math.log10(settings["lr"] / best)) / 10 + settings["epochs"] / 100,
                "wall_s": 1.0}

    tuned_path = tmp_path / "tuned.yaml"
    with ThreadPoolExecutor(max_workers=2) as pool:
        tune([plan], {"quickstart": ("sft", "ipo")}, pool, tuned_path, run=run)
    stages = [stage for _, stage in made]
    assert stages == sorted(stages, key=STAGES.index)  # a stage starts only when the one before has ended
    data = load_tuned(tuned_path)
    entry = data["tasks"]["quickstart"]
    assert entry["budget"] == list(TUNE_BUDGET) and entry["seed"] == 0 and entry["start_validation"] == 0.2
    assert tuned_settings(data, "quickstart", "sft") == {"lr": 3e-3, "epochs": 3}
    assert tuned_settings(data, "quickstart", "ipo") == {"lr": 3e-5, "epochs": 3, "beta": 0.1, "nll_weight": 0.0}
    assert len(entry["arms"]["ipo"]["trials"]) == sum(made.count(("ipo", stage)) for stage in STAGES)
    assert made.count(("sft", "edge")) == 2 and made.count(("ipo", "edge")) == 0  # sft's best is its grid's top
    assert len(json.loads((tmp_path / "out" / "quickstart" / "tune.json").read_text())) == len(made)


def test_the_committed_tuned_file_loads_and_names_only_known_arms_and_settings():
    """bench/efficacy_tuned.yaml is what the table runs: every arm it names exists, its settings are the arm's
    axes, the chosen trial is one of its trials, and the file holds validation numbers only (no test)."""
    from bench.efficacy_tune import TUNED_FILE

    data = load_tuned(TUNED_FILE)
    for task, entry in data["tasks"].items():
        assert task in TASKS and entry["seed"] == 0
        for arm, rec in entry["arms"].items():
            assert arm in SPACES, (task, arm)
            assert set(rec["settings"]) == set(SPACES[arm].default()), (task, arm)
            assert {**rec["settings"], "validation": rec["validation"]}.items() <= \
                   max((t for t in rec["trials"] if t["validation"] != "failed"), key=lambda t: t["validation"]).items()
            assert "test" not in rec and not any("test" in t for t in rec["trials"]), (task, arm)
