"""``selfplay report``: PNG plots of a run (per-iteration eval with pass@k and maj@k where the run has them,
reward margins, log-probs, stage times).

Only matplotlib's non-interactive Agg backend is used, so it works on a headless cluster node.
"""

from __future__ import annotations

from pathlib import Path

from selfplay.loop.manifest import STAGES
from selfplay.loop.rundir import RunDir, read_jsonl
from selfplay.loop.status import status_rows


def _train_steps(rd: RunDir) -> list[dict]:
    steps = []
    for k in rd.completed_iterations() or sorted(int(i) for i in rd.manifest.iterations):
        path = rd.iter_dir(k) / "train_metrics.jsonl"
        if path.exists():
            steps.extend({"iteration": k, **rec} for rec in read_jsonl(path))
    return steps


def write_report(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rd = RunDir(run_dir)
    out_dir = Path(out) if out else rd.root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = status_rows(run_dir)
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [str(r["iteration"]) for r in rows]
    k = next((r["k"] for r in rows if r.get("k") is not None), None)
    for key in ("accuracy", "pass@k", "maj@k", "win_rate", "mean_reward"):  # pass@k, maj@k: with evaluation.k
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(labels, [v if v is not None else float("nan") for v in values], marker="o",
                    label=key.replace("@k", f"@{k}"))
    ax.set_xlabel("iteration")
    ax.set_title("held-out evaluation")
    ax.legend()
    written.append(_save(fig, out_dir / "eval.png"))

    steps = _train_steps(rd)
    if steps:
        xs = list(range(len(steps)))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, [s.get("reward_margin") for s in steps], label="reward margin")
        ax.plot(xs, [s.get("reward_accuracy") for s in steps], label="reward accuracy")
        ax.set_xlabel("optimizer step (all iterations)")
        ax.legend()
        written.append(_save(fig, out_dir / "margins.png"))

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, [s.get("chosen_logps") for s in steps], label="chosen log-prob")
        ax.plot(xs, [s.get("rejected_logps") for s in steps], label="rejected log-prob")
        ax.set_xlabel("optimizer step (all iterations)")
        ax.set_title("policy log-probs (watch for the rejected collapse)")
        ax.legend()
        written.append(_save(fig, out_dir / "logps.png"))

    iters = sorted(int(k) for k in rd.manifest.iterations)
    if iters:
        fig, ax = plt.subplots(figsize=(6, 4))
        bottom = [0.0] * len(iters)
        for stage in STAGES:
            secs = [rd.stage_record(k, stage).seconds for k in iters]
            ax.bar([str(k) for k in iters], secs, bottom=bottom, label=stage)
            bottom = [b + s for b, s in zip(bottom, secs)]
        ax.set_xlabel("iteration")
        ax.set_ylabel("seconds")
        ax.set_title("stage times")
        ax.legend(fontsize="small")
        written.append(_save(fig, out_dir / "stage_times.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
