"""``selfplay status``: one row per iteration from the manifest and each iteration's eval.json.

The pass@k and maj@k columns (``evaluation.k``) are shown only for runs that have them, headed with the
run's k (``pass@8``); they take the place of the mean-reward column (``--json`` keeps it), so the table
still fits 80 columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.loop.manifest import STAGES, PairsRecord, Stage, TrainRecord
from selfplay.loop.rundir import RunDir, RunDirError, read_json

COLUMNS = ("iteration", "state", "pairs", "loss", "reward_acc", "accuracy", "win_rate", "mean_reward", "rejected_drift",
           "seconds")
HEADERS = ("iter", "state", "pairs", "loss", "rew.acc", "acc", "win", "reward", "drift", "secs")
EVAL_KEYS = ("accuracy", "win_rate", "mean_reward", "pass@k", "maj@k", "pass@1", "k")  # what rows take from eval.json
SAMPLED = ("pass@k", "maj@k")  # columns after `acc` instead of `reward`, shown when some row has them


def _eval(path: Path) -> dict[str, Any]:
    return read_json(path) if path.exists() else {}


def status_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    rd = RunDir(run_dir)
    if not rd.exists:
        raise RunDirError(f"{rd.root} has no manifest.json: not a selfplay run directory")
    rows = []
    manifest = rd.manifest
    failed = manifest.failed
    if failed is not None and failed.iteration is None:
        rows.append({"iteration": "initial", "state": "failed at prepare", "error": failed.error})
    if failed is not None and failed.iteration is not None and str(failed.iteration) not in manifest.iterations:
        rows.append({"iteration": failed.iteration, "state": f"failed at {failed.stage}", "error": failed.error})
    if manifest.prepared:
        ev = _eval(rd.initial_dir / "eval.json")
        rows.append({"iteration": "initial", "state": "done", **{k: ev.get(k) for k in EVAL_KEYS},
                     "seconds": round(manifest.prepare.seconds if manifest.prepare is not None else 0)})
    for key in sorted(manifest.iterations, key=int):
        entry = manifest.iterations[key]
        k = int(key)
        pending = [s for s in STAGES if s not in entry.stages]
        state = "done" if entry.complete else f"at {pending[0]}" if pending else "committing"
        pairs = rd.stage_record(k, Stage.PAIRS)
        train = rd.stage_record(k, Stage.TRAIN)
        assert isinstance(pairs, PairsRecord) and isinstance(train, TrainRecord)
        if pairs.no_pairs:  # nothing to learn from: the policy was kept as it was
            state = "no pairs" if entry.complete else state
        if failed is not None and failed.iteration == k:
            state = f"failed at {failed.stage}"
        ev = _eval(rd.iter_dir(k) / "eval.json")
        rows.append({
            "iteration": k,
            "state": state,
            "pairs": pairs.pairs,
            "loss": train.loss,
            "reward_acc": train.reward_accuracy,
            **{c: ev.get(c) for c in EVAL_KEYS},
            "rejected_drift": train.rejected_drift,
            "seconds": round(sum(s.seconds for s in entry.stages.values())),
            **({"error": failed.error} if failed is not None and failed.iteration == k else {}),
        })
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def status_table(run_dir: str | Path, console=None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # Fits 80 columns: no outer edge, one space between columns. Only the state column may wrap (a long
    # "failed at ..." state), so the numbers are never cut short.
    table = Table(title=f"selfplay run {Path(run_dir)}", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
                  show_edge=False, collapse_padding=True)
    rows = status_rows(run_dir)
    columns, headers = list(COLUMNS), list(HEADERS)
    k = next((row["k"] for row in rows if row.get("k") is not None), None)
    if k is not None:  # after `acc`, headed with the run's k; `reward` makes room
        del headers[columns.index("mean_reward")], columns[columns.index("mean_reward")]
        at = columns.index("accuracy") + 1
        columns[at:at] = SAMPLED
        headers[at:at] = [name.replace("@k", f"@{k}") for name in SAMPLED]
    for header in headers:
        table.add_column(header, justify="right", no_wrap=header != "state", overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row.get(c), 2 if c == "rejected_drift" else 3) for c in columns))
    console = console or Console()
    console.print(table)
    for row in rows:
        if row.get("error"):
            console.print(f"iteration {row['iteration']} failed: {row['error']}", markup=False, soft_wrap=True)
