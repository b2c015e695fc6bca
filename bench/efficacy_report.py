"""Measurements, table and claims of ``bench.efficacy`` (see that module for the design).

* ``measure``: a finished run's validation and test accuracy (``bench.efficacy_split``, from its eval
  tables), optimizer steps, and with ``full`` its KL to the start policy and the change of its chosen
  log-probs, both by a plain forward of the start and final policies over iteration 0's samples and
  pairs (the learner's own tokenisation, ``selfplay.train.data.encode``).
* ``summarise`` / ``table_lines``: one row per arm over seeds (mean, sample sd, min) of *test* accuracy;
  validation numbers stay in ``results.json`` for the choices that need them.
* ``claims``: each published claim as held / not held, computed from the same numbers; a difference is
  called beyond seed noise only when it exceeds two standard errors of the two means. Where a claim
  needs "the best preference arm", it is chosen by validation accuracy, never test.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from bench.efficacy_arms import PREFERENCE_ARMS, describe
from selfplay.loop.compare import compare_runs, format_table, run_summary, write_plot

# torch, transformers and the learner's modules load only where a run's policies are scored (``measure``),
# not for the table, the claims and the plots.
MAX_ROWS = 1024  # samples / pairs per measurement: enough for a mean, cheap for a small policy


def _logps(model_dir: str | Path, table, column: str, cfg) -> list[float]:
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from selfplay.train.data import encode
    from selfplay.train.reference import load_plain_model, score

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per policy would bury the bench's log
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    data = encode(table, tok, (column,), max_prompt_length=cfg.max_prompt_length,
                  max_completion_length=cfg.max_completion_length)
    model = load_plain_model(str(model_dir), torch.float32, torch.device("cpu"))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return score(model, data, (column,), pad, torch.device("cpu"), batch_size=64)[column].tolist()


def _shift(start: str, final: Path, table, column: str, cfg) -> float | None:
    """Mean of log pi_final - log pi_start of ``column``'s completions (first MAX_ROWS rows)."""
    if table.num_rows == 0:
        return None
    table = table.slice(0, MAX_ROWS)
    before, after = _logps(start, table, column, cfg), _logps(final, table, column, cfg)
    return sum(a - b for a, b in zip(after, before)) / len(before)


def measure(run_dir: Path, start_policy: str, finished: bool, full: bool = True) -> dict[str, Any]:
    """validation / test accuracy (and the start's), steps, state, and with ``full`` kl_to_start and
    chosen_logp_change of one run (None where unknown)."""
    from bench.efficacy_split import run_split_scores
    from selfplay.config import load_config
    from selfplay.loop.rundir import RunDir, read_parquet

    summary = run_summary(run_dir)
    split = run_split_scores(run_dir)
    out: dict[str, Any] = {"test": split["test"], "validation": split["validation"],
                           "start_test": split["start_test"], "start_validation": split["start_validation"],
                           "n_test": split["n_test"], "n_validation": split["n_validation"],
                           "state": summary["state"], "kl_to_start": None, "chosen_logp_change": None}
    rd = RunDir(run_dir)
    out["steps"] = sum(rd.stage_record(int(k), "train").steps for k in rd.manifest.iterations)
    if not full or not finished or not rd.completed_iterations():
        return out
    import torch

    torch.set_num_threads(1)
    cfg = load_config(rd.manifest.recipe).train
    final, it0 = rd.current_policy(), rd.iter_dir(0)
    kl = _shift(start_policy, final, read_parquet(it0 / "generations.parquet"), "response", cfg)
    out["kl_to_start"] = None if kl is None else -kl  # E_start[log pi_start - log pi_final]
    out["chosen_logp_change"] = _shift(start_policy, final, read_parquet(it0 / "pairs.parquet"), "chosen", cfg)
    return out


# ----------------------------------------------------------------------------------------- the table
FIELDS = ("test", "validation", "gain", "kl_to_start", "chosen_logp_change", "steps", "wall_s")
LOSS_ARMS = ("dpo_previous", "dpo_initial", "ipo", "simpo", "kto", "spin")
"""The arms of issue 26's first goal: each named loss above the start policy on every seed."""


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "sd": None, "min": None, "n": 0}
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "n": len(values)}


def _gain(r: dict[str, Any]) -> float | None:
    return None if r.get("test") is None or r.get("start_test") is None else r["test"] - r["start_test"]


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """arm -> {field: stats over the seeds that finished, "seeds": finished, "failed": count,
    "settings": the arm's settings, "tuned": whether they came from the tuned file}."""
    out: dict[str, dict[str, Any]] = {}
    for arm in dict.fromkeys(r["arm"] for r in results):
        mine = [r for r in results if r["arm"] == arm]
        ok = [{**r, "gain": _gain(r)} for r in mine if r["returncode"] == 0]
        out[arm] = {f: _stats([r[f] for r in ok if r.get(f) is not None]) for f in FIELDS}
        out[arm].update(seeds=len(ok), failed=len(mine) - len(ok), settings=mine[0].get("settings"),
                        tuned=all(r.get("tuned", False) for r in mine))
    return out


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table_lines(arms: tuple[str, ...] | list[str], summary: dict[str, dict[str, Any]]) -> list[str]:
    """The table: test accuracy only (mean ± sample sd, min over seeds; gain = test minus the start's)."""
    headers = ("arm", "settings", "seeds", "test acc mean ± sd", "min", "min gain", "KL to start",
               "Δ chosen logp", "steps", "wall s")
    rows = []
    for arm in arms:
        s = summary.get(arm)
        if s is None:
            continue
        acc = s["test"]
        seeds = f"{s['seeds']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
        settings = describe(s["settings"]) + ("" if s["tuned"] else " (untuned)")
        rows.append((arm, settings, seeds, f"{_num(acc['mean'], '.3f')} ± {_num(acc['sd'], '.3f')}",
                     _num(acc["min"], ".3f"), _num(s["gain"]["min"], "+.3f"), _num(s["kl_to_start"]["mean"], ".4f"),
                     _num(s["chosen_logp_change"]["mean"], "+.3f"), _num(s["steps"]["mean"], ".0f"),
                     _num(s["wall_s"]["mean"], ".0f")))
    return format_table(headers, rows, left={0, 1, 2}).splitlines()


def start_line(starts: dict[int, dict[str, Any]]) -> str:
    return ("start policy test accuracy: " + ", ".join(_num(s.get("test"), ".3f") for s in starts.values())
            + f" (seeds {', '.join(map(str, starts))})")


def print_results(arms, results: list[dict[str, Any]], starts: dict[int, dict[str, Any]]) -> None:
    print()
    print(start_line(starts))
    for line in table_lines(arms, summarise(results)):
        print(line)
    print()


# ---------------------------------------------------------------------------------------- the claims
def _compare(summary: dict, a: str, b: str, field: str = "test") -> tuple[float, bool] | None:
    """(mean a - mean b, beyond two standard errors) or None when either arm has no value."""
    sa, sb = summary.get(a, {}).get(field), summary.get(b, {}).get(field)
    if not sa or not sb or sa["mean"] is None or sb["mean"] is None:
        return None
    diff = sa["mean"] - sb["mean"]
    if sa["sd"] is None or sb["sd"] is None:
        return diff, False
    se = math.sqrt(sa["sd"] ** 2 / sa["n"] + sb["sd"] ** 2 / sb["n"])
    return diff, abs(diff) > 2 * se


def _verdict(held: bool, beyond: bool, n_seeds: int) -> str:
    if n_seeds < 2:
        return "HELD (1 seed: no noise estimate)" if held else "NOT HELD (1 seed: no noise estimate)"
    return ("HELD" if held else "NOT HELD") + (" beyond seed noise" if beyond else " (within seed noise)")


def min_seeds(summary: dict[str, dict[str, Any]]) -> int:
    """The fewest seeds any arm of ``summary`` ran on: the n a verdict's noise estimate rests on."""
    return min((s["seeds"] for s in summary.values()), default=0)


def best_by_validation(summary: dict[str, dict[str, Any]], arms: tuple[str, ...]) -> str | None:
    """Of ``arms``, the one with the highest mean *validation* accuracy in this table (never test)."""
    scored = [(summary[a]["validation"]["mean"], -i, a) for i, a in enumerate(arms)
              if a in summary and summary[a]["validation"]["mean"] is not None]
    return max(scored)[2] if scored else None


def claims(results: list[dict[str, Any]], reference: str = "previous") -> list[str]:
    """One line per published claim (issue 26), held or not, from the measured table."""
    summary = summarise(results)
    n = min_seeds(summary)
    lines = ["claims at this scale (test accuracy; computed from the table above):"]
    for arm in LOSS_ARMS:
        s = summary.get(arm)
        if s is None or s["gain"]["min"] is None:
            continue
        held = s["gain"]["n"] == s["seeds"] + s["failed"] and s["gain"]["min"] > 0
        lines.append(f"- {arm} ends above the start on every seed: smallest gain {s['gain']['min']:+.3f} over "
                     f"{s['gain']['n']} seed(s) -> {'HELD' if held else 'NOT HELD'}")
    for online in ("dpo_previous", "dpo_initial"):
        c = _compare(summary, online, "dpo_offline")
        if c is not None:
            lines.append(f"- online iterative DPO ({online}) beats offline DPO: test {c[0]:+.3f} -> "
                         f"{_verdict(c[0] > 0, c[1], n)}")
    if not any(line.startswith("- online") for line in lines):
        lines.append("- online iterative DPO beats offline DPO: not measured (arms missing or failed)")
    dpo = f"dpo_{reference}"
    d, p = (summary.get(a, {}).get("chosen_logp_change", {}).get("mean") for a in (dpo, "dpop"))
    if d is None or p is None:
        lines.append("- DPO lowers the chosen log-prob while DPOP keeps it up: not measured (arms missing or failed)")
    else:
        held = d < 0 <= p
        lines.append(f"- DPO lowers the chosen log-prob while DPOP keeps it up: Δ chosen logp {dpo} {d:+.3f}, "
                     f"dpop {p:+.3f} -> {'HELD' if held else 'NOT HELD'}"
                     + ("" if held else f" ({dpo} {'lowered' if d < 0 else 'raised'} it, dpop "
                                        f"{'kept it up' if p >= 0 else 'lowered it too'})"))
    best = best_by_validation(summary, PREFERENCE_ARMS)
    for arm, what in (("rpo", "Iterative RPO"), (best, f"the best preference arm by validation ({best})")):
        c = None if arm is None else _compare(summary, arm, "rft")
        if c is None:
            lines.append(f"- {what} beats RFT at equal samples: not measured (arms missing or failed)")
        else:
            lines.append(f"- {what} beats RFT at equal samples: test {c[0]:+.3f} -> {_verdict(c[0] > 0, c[1], n)}")
    c = _compare(summary, "spin", "sft")
    if c is not None:
        lines.append(f"- SPIN vs more SFT from this start (not the paper's regime; see --spin-regime): test "
                     f"{c[0]:+.3f} -> {_verdict(c[0] > 0, c[1], n)}")
    return lines


def across_tasks(results_by_task: dict[str, list[dict[str, Any]]], goal: int = 2) -> list[str]:
    """Issue 26's cross-task goal from the per-task tables: on how many tasks the best preference arm
    (chosen by validation, per task) beats RFT by more than the seeds' spread."""
    lines, wins, measured = [f"across the {len(results_by_task)} tasks (test accuracy; from the tables above):"], 0, 0
    for name, results in results_by_task.items():
        summary = summarise(results)
        n = min_seeds(summary)
        best = best_by_validation(summary, PREFERENCE_ARMS)
        c = None if best is None else _compare(summary, best, "rft")
        if c is None:
            lines.append(f"- {name}: best preference arm vs RFT not measured (arms missing or failed)")
            continue
        measured += 1
        wins += c[0] > 0 and c[1] and n >= 2
        lines.append(f"- {name}: best preference arm {best} vs RFT {c[0]:+.3f} -> {_verdict(c[0] > 0, c[1], n)}")
    lines.append(f"- the best preference arm beats RFT beyond seed noise on {wins} of {measured} measured task(s) "
                 f"(goal: {goal}) -> {'HELD' if wins >= goal else 'NOT HELD'}")
    return lines


def write_plots(out: Path, results: list[dict[str, Any]]) -> list[Path]:
    """``selfplay compare``'s overlay plot of each seed's arms."""
    from selfplay.loop.manifest import manifest_path

    paths = []
    for seed in sorted({r["seed"] for r in results}):
        dirs = [r["run_dir"] for r in results if r["seed"] == seed and r.get("run_dir")
                and manifest_path(Path(r["run_dir"])).exists()]
        if dirs:
            paths.append(write_plot(compare_runs(dirs), out / f"compare_seed{seed}.png"))
    return paths
