"""pass@k and maj@k (``evaluation.k``): the estimator against hand-computed values, the vote, the config
rule, and one held-out evaluation on the tiny real policy through the in-process HF engine."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pyarrow.parquet as pq
import pytest

from selfplay.config import ConfigError, load_config
from selfplay.loop.evaluation import majority, pass_at_k, sampled_metrics

RECIPE = {"policy": {"preset": "nano", "tokenizer": "char"}, "task": {"type": "arithmetic", "partial_credit": True},
          "judge": {"type": "verifier"}, "generation": {"max_tokens": 12},
          "evaluation": {"num_prompts": 6, "k": 4, "temperature": 1.0}}


def test_pass_at_k_matches_hand_computed_binomials():
    # n=5 samples, c=2 correct, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    # k=1 is the share of correct samples; no correct sample is 0; fewer wrong samples than k is 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25, abs=1e-12)
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0
    # n=k: at least one correct sample
    assert pass_at_k(8, 1, 8) == 1.0
    # large n, where C(n, k) overflows a float: the product form against exact rationals
    exact = 1 - Fraction(math.comb(197, 100), math.comb(200, 100))
    assert pass_at_k(200, 3, 100) == pytest.approx(float(exact), rel=1e-12)
    for bad in ((3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)):
        with pytest.raises(ValueError, match="pass_at_k"):
            pass_at_k(*bad)


def test_majority_vote_ties_go_to_the_first_sampled_and_none_does_not_vote():
    assert majority(["7", "12", "12", "7", "12"]) == 1
    assert majority(["b", "a", "a", "b"]) == 0  # 2-2 tie: "b" was sampled first
    assert majority([None, None, "3"]) == 2
    assert majority([None, None]) is None


def test_sampled_metrics_by_hand_with_partial_credit_as_wrong():
    scores = [[1.0, 0.0, 0.5, 1.0],   # 2 correct (0.5 is partial credit: wrong); majority "12" is correct
              [0.0, 0.0, 0.0, 1.0],   # 1 correct; majority "3" is wrong
              [0.5, 0.5, 0.0, 0.0]]   # none correct although every score but two is > 0
    answers = [["12", "7", "12", "12"], ["3", "3", "5", "9"], ["4", "4", None, "1"]]
    out = sampled_metrics(scores, answers, k=4)
    assert out["pass@k"] == pytest.approx((1 + 1 + 0) / 3)
    assert out["pass@1"] == pytest.approx((0.5 + 0.25 + 0.0) / 3)
    assert out["maj@k"] == pytest.approx(1 / 3)
    # with k=2 of the same 4 samples: 1 - C(2,2)/C(4,2) = 5/6 and 1 - C(3,2)/C(4,2) = 1/2
    assert sampled_metrics(scores, answers, k=2)["pass@k"] == pytest.approx((5 / 6 + 1 / 2 + 0) / 3)


def test_k_needs_a_sampling_temperature_and_at_least_two_samples():
    with pytest.raises(ConfigError, match="evaluation.temperature"):
        load_config({**RECIPE, "evaluation": {"k": 8}})
    with pytest.raises(ConfigError, match="evaluation.k"):
        load_config({**RECIPE, "evaluation": {"k": 1, "temperature": 1.0}})
    assert load_config({**RECIPE, "evaluation": {}}).evaluation.k is None


class _InProcessPool:
    """The pool API the evaluation uses, over a real in-process HF engine (no Ray)."""

    def __init__(self, engine):
        self.engine = engine

    def expect_version(self, version: int) -> None:
        assert version == self.engine.version

    def generate(self, prompts, sampling, shard_dir=None):
        return self.engine.generate(list(prompts), sampling), 0.0


def test_evaluation_with_k_on_the_tiny_policy(tmp_path, tiny_model_dir, one_thread):
    from selfplay.generate.hf_engine import HFEngine
    from selfplay.loop import stages
    from selfplay.loop.rundir import RunDir
    from selfplay.loop.runtime import Runtime

    cfg = load_config(RECIPE)
    rd = RunDir(tmp_path / "run")
    rd.create({}, "", {})
    with Runtime(cfg, rd) as rt:
        rt._generators = _InProcessPool(HFEngine(tiny_model_dir, dtype="float32", batch_size=4))
        info = stages.evaluate_policy(rt, tiny_model_dir, version=0, out_dir=rd.initial_dir, generators=rt.generators,
                                      judge=lambda: rt.judge)
        greedy = rt.sampling(seed=0, eval_mode=True)
        sampled = rt.sampling(seed=0, eval_mode=True, eval_samples=True)
    assert (greedy.temperature, greedy.n) == (0.0, 1)  # with k, accuracy scores the greedy answer
    assert (sampled.temperature, sampled.n) == (1.0, 4)
    ev = json.loads((rd.initial_dir / "eval.json").read_text())
    assert ev["k"] == 4 and {"accuracy", "pass@k", "pass@1", "maj@k"} <= set(ev) and info["pass@k"] == ev["pass@k"]
    rows = pq.read_table(rd.initial_dir / "eval_generations.parquet").to_pylist()
    assert len(rows) == 6
    task = rt.task
    from selfplay.tasks.base import Example

    for row in rows:  # the samples are kept, scored by the task's verifier, and voted on as stripped text
        assert len(row["samples"]) == 4
        example = Example(row["prompt_id"], row["prompt"], row["reference"])
        assert row["sample_scores"] == [task.score(example, s) for s in row["samples"]]
        assert row["sample_answers"] == [s.strip() for s in row["samples"]]
    assert len({s for r in rows for s in r["samples"]}) > 6  # sampled at temperature 1: not six greedy answers
    again = sampled_metrics([r["sample_scores"] for r in rows], [r["sample_answers"] for r in rows], k=4)
    assert again == {key: ev[key] for key in again}
    assert ev["accuracy"] == pytest.approx(sum(r["verifier_score"] for r in rows) / 6)


def _run_with_k(root, name: str, k: int, iterations: int = 12):
    """A run directory as the driver leaves it with ``evaluation.k`` (hand-written: no Ray, no model)."""
    from selfplay.loop.rundir import STAGES, RunDir, write_json

    rd = RunDir(root / name)
    rd.create({"name": name, "iterations": iterations}, "", {})
    rd.manifest.prepared = True
    rd.manifest.prepare = {"seconds": 45.2}
    rd.initial_dir.mkdir()
    write_json(rd.initial_dir / "eval.json", {"version": 0, "accuracy": 0.0213, "k": k, "pass@k": 0.1234,
                                              "pass@1": 0.02, "maj@k": 0.0312})
    for it in range(iterations):
        for stage in STAGES:
            info = {"pairs": 1234 + it} if stage == "pairs" else {}
            if stage == "train":
                info = {"loss": 0.68412, "reward_accuracy": 0.63641, "rejected_drift": -1.4321}
            rd.mark_stage(it, stage, 1000.0, info)
        rd.iter_dir(it).mkdir(parents=True, exist_ok=True)
        write_json(rd.iter_dir(it) / "eval.json", {"version": it + 1, "accuracy": 0.0263 + it / 1000,
                                                   "win_rate": 0.50312, "mean_reward": -0.02561, "k": k,
                                                   "pass@k": 0.5 + it / 100, "pass@1": 0.1, "maj@k": 0.25})
        rd.mark_complete(it, it + 1)
    rd.save()
    return rd.root


def test_status_report_and_compare_show_pass_and_maj_at_k(tmp_path):
    import io

    from rich.console import Console

    from selfplay.loop.compare import compare_runs, table_columns, table_rows
    from selfplay.loop.report import write_report
    from selfplay.loop.status import status_rows, status_table

    run = _run_with_k(tmp_path, "a-run-directory-with-a-long-name", k=8)
    out = io.StringIO()
    status_table(run, console=Console(file=out, width=80))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in out.getvalue()
    header = next(line for line in lines if "iter" in line.split())
    assert header.split()[5:8] == ["acc", "pass@8", "maj@8"]
    assert next(line for line in lines if line.split()[:1] == ["11"]).split()[5:8] == ["0.0373", "0.61", "0.25"]
    assert status_rows(run)[0]["pass@k"] == 0.1234
    assert "eval.png" in {p.name for p in write_report(run)}

    other = _run_with_k(tmp_path, "other", k=4, iterations=2)
    both = compare_runs([run, other])
    assert table_columns(both)[5:9] == ("gain", "pass@k", "maj@k", "best")  # two k: each cell names its own
    assert table_rows(both)[0][6:8] == ("0.610 (k=8)", "0.250 (k=8)")
    one = compare_runs([run])
    assert table_columns(one)[6:8] == ("pass@8", "maj@8") and table_rows(one)[0][6:8] == ("0.610", "0.250")
    assert [p["pass@k"] for p in one[0]["points"]][:2] == [0.1234, 0.5]
    from selfplay.loop.compare import write_plot

    assert write_plot(both, tmp_path / "compare.png").stat().st_size > 0  # pass@k dashed beside the accuracy
