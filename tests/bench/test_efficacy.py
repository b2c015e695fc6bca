"""bench.efficacy without running it: every arm is a valid recipe, and the table and the claims are
computed from the measured numbers (synthetic results here, where the verdicts are known by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.efficacy import ALL_ARMS, FULL_TABLE_BUDGET, arm_overrides, quick_arms
from bench.efficacy_report import claims, summarise, table_lines
from selfplay.config import load_config

ROOT = Path(__file__).resolve().parents[2]
START = ["policy.path=/models/start", "policy.preset=null", "policy.warmstart=null"]


@pytest.mark.parametrize("recipe", ["quickstart.yaml", "spin_quickstart.yaml"])
def test_every_arm_is_a_valid_recipe_with_the_same_budget(recipe):
    base = load_config(ROOT / "recipes" / recipe)
    budget = base.iterations * base.generation.prompts_per_iteration * base.generation.n
    for arm in ALL_ARMS:
        if recipe.startswith("spin") and arm not in ("sft", "spin"):
            with pytest.raises(ValueError, match="need a verifier"):
                arm_overrides(arm, base)
            continue
        cfg = load_config(ROOT / "recipes" / recipe, [*START, *arm_overrides(arm, base)])
        assert cfg.iterations * cfg.generation.prompts_per_iteration * cfg.generation.n == budget, arm
        assert cfg.policy.path == "/models/start" and cfg.policy.warmstart is None
    cfg = lambda arm: load_config(ROOT / "recipes" / recipe, [*START, *arm_overrides(arm, base)])
    assert (cfg("sft").pairing, cfg("sft").judge) == (cfg("spin").pairing, cfg("spin").judge)  # same rows
    assert (cfg("sft").train.loss.type, cfg("spin").train.loss.type) == ("sft", "sigmoid")
    if not recipe.startswith("spin"):
        assert (cfg("rft").pairing_strategy, cfg("rft").train.loss.type) == ("best", "sft")
        assert cfg("dpo_offline").iterations == 1 and cfg("dpo_offline").train.reference == "initial"
        assert cfg("simpo").train.loss.resolved_params() == {"gamma": 1.0}
        assert set(quick_arms(base.train.reference)) <= set(ALL_ARMS)


def test_the_full_tables_budget_is_the_same_for_every_arm_and_smaller_than_the_recipes():
    recipe = ROOT / "recipes" / "quickstart.yaml"
    own, base = load_config(recipe), load_config(recipe, list(FULL_TABLE_BUDGET))
    samples = lambda c: c.iterations * c.generation.prompts_per_iteration * c.generation.n
    assert samples(base) < samples(own) and base.generation.n == own.generation.n
    for arm in ALL_ARMS:
        cfg = load_config(recipe, [*FULL_TABLE_BUDGET, *START, *arm_overrides(arm, base)])
        assert samples(cfg) == samples(base), arm


def _run(arm: str, seed: int, acc: float, dchosen: float, rc: int = 0) -> dict:
    return {"arm": arm, "seed": seed, "returncode": rc, "accuracy": acc, "kl_to_start": 0.01,
            "chosen_logp_change": dchosen, "steps": 30, "wall_s": 100.0}


def test_table_and_claims_follow_the_numbers():
    results = []
    for seed, noise in enumerate((0.0, 0.01, -0.01)):
        results += [_run("dpo_offline", seed, 0.30 + noise, -1.0), _run("dpo_previous", seed, 0.50 + noise, -2.0),
                    _run("dpo_initial", seed, 0.30 - noise, -1.5), _run("dpop", seed, 0.45 + noise, 0.3),
                    _run("spin", seed, 0.20 + noise, 0.5), _run("sft", seed, 0.40 + noise, 0.8)]
    results.append(_run("sft", 3, 0.0, 0.0, rc=1))  # a failed seed is counted, not averaged
    summary = summarise(results)
    assert summary["dpo_previous"]["accuracy"]["mean"] == pytest.approx(0.50)
    assert summary["dpo_previous"]["accuracy"]["sd"] == pytest.approx(0.01)
    assert summary["sft"]["seeds"] == 3 and summary["sft"]["failed"] == 1
    assert summary["sft"]["accuracy"]["min"] == pytest.approx(0.39)
    lines = table_lines(["dpo_previous", "sft", "kto"], summary)
    assert lines[2].split()[:6] == ["dpo_previous", "3", "0.500", "±", "0.010", "0.490"]
    assert "3 (1 failed)" in lines[3] and len(lines) == 4  # kto has no results: no row

    out = "\n".join(claims(results, "previous"))
    assert "(dpo_previous) beats offline DPO: accuracy +0.200 -> HELD beyond seed noise" in out
    assert "(dpo_initial) beats offline DPO: accuracy +0.000 -> NOT HELD (within seed noise)" in out
    assert "dpo_previous -2.000, dpop +0.300 -> HELD" in out
    assert "SPIN beats more SFT (same steps): accuracy -0.200 -> NOT HELD beyond seed noise" in out


def test_claims_say_what_was_not_measured():
    out = claims([_run("dpo_previous", 0, 0.5, 0.2), _run("dpop", 0, 0.4, -0.1)], "previous")
    assert "online iterative DPO beats offline DPO: not measured" in out[1]
    assert "dpo_previous +0.200, dpop -0.100 -> NOT HELD (dpo_previous raised it, dpop lowered it too)" in out[2]
    assert "SPIN beats more SFT: not measured" in out[3]
