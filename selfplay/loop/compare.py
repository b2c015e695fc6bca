"""``selfplay compare RUN_DIR...``: several runs side by side, as one table and one overlay plot.

This is what a user reaches for when choosing an algorithm: the same start, different recipes, which
one ended higher and at what cost. Everything is read from what the runs left on disk (the manifest and
each iteration's ``eval.json``), so a run that is still going or stopped at a failed stage (both read "unfinished":
the manifest cannot tell them apart), or that skipped evaluation on some iterations, is shown as far as
it got instead of failing the whole comparison.

Choices:

* Per iteration: ``accuracy`` from ``eval.json`` (absent when the iteration was not evaluated),
  ``reward_margin`` from the train stage's summary in the manifest, ``kl`` from ``eval.json`` or else
  the train stage (it is recorded there whether or not the iteration was evaluated).
* "end" is the last *evaluated* policy and "gain" is end minus the initial policy's accuracy; "best"
  names the iteration it came from. A directory that is not a run becomes a row saying why.
* Runs evaluated with ``evaluation.k`` add ``pass@k`` and ``maj@k`` (of the "end" iteration) as two more
  columns, headed ``pass@8`` when every such run used the same k, else each cell names its k; the plot
  draws pass@k dashed beside the accuracy.
* The plot has three panels (accuracy, reward margin, KL) over iterations, one line per run; missing
  points are skipped and the line joins the points that exist (Agg backend: headless nodes work).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from selfplay.loop.manifest import STAGES, Manifest, Stage, TrainRecord
from selfplay.loop.rundir import RunDir, RunDirError

SERIES = ("accuracy", "reward_margin", "kl")
SAMPLED = ("pass@k", "maj@k")  # evaluation.k's metrics, per evaluated point


def _read_eval(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def run_summary(run_dir: str | Path, label: str | None = None) -> dict[str, Any]:
    """One run as a dict: ``run``, ``path``, ``state``, ``planned``/``completed`` iteration counts,
    ``points`` (one per evaluated-or-trained iteration, ``iteration`` "initial" or k, plus SERIES),
    and the table's figures (``start``, ``end``, ``gain``, ``best``, ``best_iteration``, ``seconds``)."""
    path = Path(run_dir)
    out: dict[str, Any] = {"run": label or path.name, "path": str(path), "points": []}
    try:
        rd = RunDir(path)
    except RunDirError as exc:
        return {**out, "state": f"unreadable: {exc}"}
    if not rd.exists:
        return {**out, "state": "not a run (no manifest.json)"}
    manifest = rd.manifest
    iterations = manifest.iterations
    planned = manifest.recipe.get("iterations")
    completed = rd.completed_iterations()
    points: list[dict[str, Any]] = []
    if manifest.prepared:
        ev = _read_eval(rd.initial_dir / "eval.json")
        points.append({"iteration": "initial", "accuracy": _number(ev.get("accuracy")),
                       "reward_margin": None, "kl": None, **_sampled(ev)})
    for key in sorted(iterations, key=int):
        k = int(key)
        train = rd.stage_record(k, Stage.TRAIN)
        assert isinstance(train, TrainRecord)
        ev = _read_eval(rd.iter_dir(k) / "eval.json")
        kl = _number(ev.get("kl"))
        points.append({"iteration": k, "accuracy": _number(ev.get("accuracy")),
                       "reward_margin": _number(train.reward_margin),
                       "kl": kl if kl is not None else _number(train.as_dict().get("kl")), **_sampled(ev)})
    seconds = (manifest.prepare.seconds if manifest.prepare is not None else 0.0) + sum(
        s.seconds for entry in iterations.values() for s in entry.stages.values())
    out.update(state=_state(manifest, completed, planned), planned=planned, completed=len(completed),
               points=points, seconds=round(seconds, 1))
    out.update(_figures(points))
    return out


def _sampled(ev: dict[str, Any]) -> dict[str, Any]:
    """pass@k and maj@k of one eval.json, with its k (nothing without ``evaluation.k``)."""
    if ev.get("k") is None:
        return {}
    return {"k": ev["k"], **{key: _number(ev.get(key)) for key in SAMPLED}}


def _state(manifest: Manifest, completed: list[int], planned: int | None) -> str:
    if not manifest.prepared:
        return "unfinished: prepare"
    iterations = manifest.iterations
    open_ = [int(k) for k, v in iterations.items() if not v.complete]
    if open_:
        k = min(open_)
        pending = [s for s in STAGES if s not in iterations[str(k)].stages]
        return f"unfinished: iter {k} at {pending[0] if pending else 'commit'}"
    if planned is not None and len(completed) < planned:
        return f"unfinished: {len(completed)} of {planned} done"
    return "done"


def _figures(points: list[dict[str, Any]]) -> dict[str, Any]:
    evaluated = [p for p in points if p["accuracy"] is not None]
    start = next((p["accuracy"] for p in evaluated if p["iteration"] == "initial"), None)
    end = evaluated[-1] if evaluated else None
    best = max(evaluated, key=lambda p: p["accuracy"]) if evaluated else None
    trained = [p for p in points if p["iteration"] != "initial"]
    last = lambda key: next((p[key] for p in reversed(trained) if p[key] is not None), None)
    return {
        "start": start,
        "end": end["accuracy"] if end else None,
        "end_iteration": end["iteration"] if end else None,
        "gain": end["accuracy"] - start if end is not None and start is not None else None,
        "best": best["accuracy"] if best else None,
        "best_iteration": best["iteration"] if best else None,
        **({"k": end["k"], **{key: end.get(key) for key in SAMPLED}} if end and end.get("k") is not None else {}),
        "reward_margin": last("reward_margin"),
        "kl": last("kl"),
    }


def _labels(run_dirs: list[str | Path]) -> list[str]:
    """Directory names, with the parent prefixed where two runs share a name."""
    paths = [Path(p).resolve() for p in run_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def compare_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """``run_summary`` of each directory, labelled so that every run has a distinct name."""
    if not run_dirs:
        raise ValueError("compare: give at least one run directory")
    return [run_summary(p, label) for p, label in zip(run_dirs, _labels(run_dirs))]


# ------------------------------------------------------------------------------------------- output
COLUMNS = ("run", "state", "iters", "start", "end", "gain", "best", "margin", "kl", "secs", "accuracy by iteration")


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return str(value)


def _sampled_columns(summaries: list[dict[str, Any]]) -> tuple[list[str], int | None]:
    """The pass@k/maj@k headers (none when no run has them) and the k they share (None: it differs)."""
    ks = {s.get("k") for s in summaries if s.get("k") is not None}
    if not ks:
        return [], None
    shared = ks.pop() if len(ks) == 1 else None
    return [key.replace("@k", f"@{shared}") if shared else key for key in SAMPLED], shared


def table_columns(summaries: list[dict[str, Any]]) -> tuple[str, ...]:
    """``COLUMNS``, with pass@k and maj@k after ``gain`` when some run has them."""
    extra, _ = _sampled_columns(summaries)
    at = COLUMNS.index("gain") + 1
    return (*COLUMNS[:at], *extra, *COLUMNS[at:])


def table_rows(summaries: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The table's cells, one tuple per run (in ``table_columns`` order)."""
    extra, shared = _sampled_columns(summaries)
    at = COLUMNS.index("gain") + 1
    width = len(COLUMNS) + len(extra)

    def sampled(s: dict[str, Any]) -> tuple[str, ...]:
        if not extra:
            return ()
        cells = tuple(_fmt(s.get(key)) for key in SAMPLED)
        return cells if shared or s.get("k") is None else tuple(f"{c} (k={s['k']})" for c in cells)

    rows = []
    for s in summaries:
        if not s["points"] and "planned" not in s:
            rows.append((s["run"], s["state"], *("-",) * (width - 2)))
            continue
        best = "-" if s["best"] is None else f"{s['best']:.3f} ({s['best_iteration']})"
        curve = " ".join("-" if p["accuracy"] is None else f"{p['accuracy']:.2f}" for p in s["points"])
        cells = (s["run"], s["state"], f"{s['completed']}/{_fmt(s['planned'])}", _fmt(s["start"]),
                 _fmt(s["end"]), _fmt(s["gain"], signed=True), best, _fmt(s["reward_margin"]),
                 _fmt(s["kl"]), f"{s['seconds']:.0f}", curve)
        rows.append((*cells[:at], *sampled(s), *cells[at:]))
    return rows


def format_table(headers: tuple[str, ...] | list[str], rows: list[tuple[str, ...]],
                 left: set[int] | None = None) -> str:
    """Plain fixed-width text (never truncated or wrapped, unlike a terminal-sized table): the columns in
    ``left`` (default: the first two and the last) left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    left = {0, 1, len(headers) - 1} if left is None else left

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def print_table(summaries: list[dict[str, Any]]) -> None:
    print("held-out accuracy: start = initial policy, end = last evaluated iteration, gain = end - start")
    print(format_table(table_columns(summaries), table_rows(summaries)))


def write_plot(summaries: list[dict[str, Any]], out: str | Path) -> Path:
    """Three panels (accuracy, reward margin, KL) per iteration, one line per run; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    titles = {"accuracy": "held-out accuracy", "reward_margin": "reward margin (mean over the train round)",
              "kl": "KL to the round's reference"}
    most = max((len(s["points"]) for s in summaries), default=0)
    for i, s in enumerate(summaries):
        for ax, key in zip(axes, SERIES):  # one colour per run in every panel, even where it has no points
            xs = [_x(p["iteration"]) for p in s["points"] if p[key] is not None]
            ys = [p[key] for p in s["points"] if p[key] is not None]
            if xs:
                ax.plot(xs, ys, marker="o", color=f"C{i % 10}", label=s["run"])
        sampled = [p for p in s["points"] if p.get("pass@k") is not None]
        if sampled:  # evaluation.k: pass@k beside the accuracy, dashed, unlabelled (the legend is per run)
            axes[0].plot([_x(p["iteration"]) for p in sampled], [p["pass@k"] for p in sampled], marker=".",
                         linestyle="--", color=f"C{i % 10}")
    ticks = list(range(-1, most - 1)) if most else [-1]
    for ax, key in zip(axes, SERIES):
        ax.set_title(titles[key])
        ax.set_xlabel("iteration")
        ax.set_xticks(ticks, ["init" if t == -1 else str(t) for t in ticks])
        ax.grid(alpha=0.3)
    if any(p.get("pass@k") is not None for s in summaries for p in s["points"]):
        axes[0].set_title("held-out accuracy (dashed: pass@k)")
    handles = {h.get_label(): h for ax in axes for h in ax.get_lines()  # every run, even without accuracy
               if not h.get_label().startswith("_")}
    axes[0].legend(handles.values(), handles.keys(), fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _x(iteration: int | str) -> int:
    return -1 if iteration == "initial" else int(iteration)


def compare_main(run_dirs: list[str], plot: str | None, as_json: bool = False) -> int:
    """The CLI: print the table (or JSON), write the plot; exit 1 when no directory was a readable run."""
    summaries = compare_runs(run_dirs)
    readable = [s for s in summaries if "planned" in s]
    if as_json:
        print(json.dumps(summaries, indent=2))
    else:
        print_table(summaries)
    if plot and readable:
        print(write_plot(readable, plot), file=sys.stderr if as_json else sys.stdout)
    return 0 if readable else 1
