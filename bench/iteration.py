"""One self-play iteration: ``selfplay run`` against the script pipeline SPIN/RLHFlow users run today.

    python -m bench.iteration [--prompts 64] [--n 2] [--max-tokens 32] [--shard-size 16] [--repeats 1]

Both sides run SPIN on the sorting task with the ``small`` preset (~14M parameters, char tokenizer):
sample ``--n`` answers to ``--prompts`` prompts, judge them, pair the reference answer against every
sample that misses it, one DPO (sigmoid) round with reference log-probs from the previous policy, and
the next iteration generates with the new weights.

* **selfplay**: the library's own loop (``selfplay.loop.driver.run``, what ``selfplay run`` calls) in its
  own process: Ray, vLLM generator actor, DeepSpeed learner actor (ZeRO-0), object-store weight sync
  with its probe; the learner scores each generation shard's reference log-probs while the generator
  samples the next (``--shard-size``). It runs two iterations; the second (actors warm, weights
  pushed, not reloaded) is the steady state compared here. The one-time start (Ray, actors, building
  the model) is printed apart.
* **script pipeline**: one process per stage, each a standalone script under ``bench/pipeline/``
  (no ``selfplay`` import): vLLM offline generation from the checkpoint on disk, a scoring script
  (verifier + SPIN pairs), TRL's ``DPOTrainer`` with precomputed reference log-probs then
  ``save_pretrained``; the next iteration's generation script reloads that directory. It starts from
  the selfplay run's own initial policy and uses, per iteration, the prompts selfplay sampled, with the
  same n, temperature, max tokens, batch size, learning rate, beta, epochs and thread count. Its second
  iteration (the first one that reloads a trained checkpoint) is the one compared.

Sides alternate (selfplay, scripts, selfplay, scripts, ...) for ``--repeats`` rounds, so load drift on a
shared machine hits both. Printed per side: each stage's work, the iteration's wall time, and
orchestration overhead = wall minus the sum of stage work (for the scripts: process starts, imports,
model loading, engine start and files; for selfplay: what the driver does between stages). The ratio is
the script pipeline's iteration wall time over selfplay's (a speed-up; the goal is >= 3x), from the
fastest run of each. Last line: ``iteration ratio selfplay/script pipeline: N.NNx``.

Left out of the ratio: selfplay's one-time start (paid once per run, printed), the script pipeline's
scheduler (a user runs the scripts by hand or from a shell loop; here a parent Python starts them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from selfplay.loop.manifest import Manifest, Stage
from selfplay.loop.rundir import RunDir

PIPELINE = Path(__file__).resolve().parent / "pipeline"
ITERATIONS = 2  # per side; the last one is compared (the first that starts from trained weights on both)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=2, help="samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--shard-size", type=int, default=16,
                    help="selfplay's generation.shard_size: the learner scores each shard's reference log-probs "
                         "while the generator samples the next (the scripts generate all prompts in one call)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of (selfplay, scripts)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/OpenMP threads of every process on both sides (selfplay: resources.threads_per_actor)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None,
                    help="where runs and checkpoints go, kept (default: a temp dir, removed after)")
    ap.add_argument("--child-selfplay", nargs=3, metavar=("RECIPE", "RUN_DIR", "TIMINGS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("prompts", "n", "max_tokens", "batch", "shard_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The selfplay recipe of this benchmark (SPIN on sorting, ``small`` preset, no evaluation and no
    rejected-drift diagnostic: work the script pipeline does not do)."""
    return {
        "name": "bench_iteration", "seed": args.seed, "iterations": ITERATIONS,
        "policy": {"preset": "small", "tokenizer": "char"},
        "task": {"type": "sorting", "min_len": 2, "max_len": 4, "max_value": 99},
        "generation": {"backend": "vllm", "prompts_per_iteration": args.prompts, "n": args.n,
                       "temperature": args.temperature, "max_tokens": args.max_tokens, "shard_size": args.shard_size,
                       "replicas": 1},  # one engine at --threads threads, as the scripts' one vLLM process
        "judge": {"type": "sft"},
        "pairing": {"strategy": "reference", "mix_previous": 0.0},
        "train": {"loss": {"type": "sigmoid", "beta": args.beta}, "reference": "previous",
                  "learning_rate": args.lr, "warmup_ratio": 0.0, "lr_schedule": "constant",
                  "micro_batch_size": args.batch, "epochs": 1, "max_grad_norm": 1.0},
        "evaluation": {"num_prompts": 0, "drift_samples": 0},  # the scripts evaluate and measure neither
        "resources": {"learners": 1, "threads_per_actor": args.threads},
    }


# ------------------------------------------------------------------------------------- selfplay side
def iteration_timings(manifest: Manifest) -> dict[str, Any]:
    """Each iteration's wall time (from its start to its last stage) and its stages' seconds, as the
    run's manifest records them."""
    return {"walls": {int(k): it.wall_seconds for k, it in manifest.iterations.items()},
            "stages": {int(k): {str(name): s.seconds for name, s in it.stages.items()}
                       for k, it in manifest.iterations.items()}}


def child_selfplay(recipe_path: str, run_dir: str, timings: str) -> None:
    """Run the loop in this process and write the iteration walls and stage seconds to ``timings``."""
    from rich.console import Console

    from selfplay.config.load import load_config
    from selfplay.loop.driver import run

    start = time.perf_counter()
    rd = run(load_config(recipe_path), run_dir, console=Console(file=io.StringIO()), source=recipe_path)
    total = time.perf_counter() - start
    Path(timings).write_text(json.dumps({**iteration_timings(rd.manifest), "total_s": total}))


def run_selfplay(args: argparse.Namespace, work: Path, r: int, env: dict[str, str]) -> dict[str, Any]:
    rec = work / f"recipe-{r}.yaml"
    rec.write_text(yaml.safe_dump(recipe(args)))
    run_dir, timings = work / f"selfplay-{r}", work / f"selfplay-{r}.json"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.iteration", "--child-selfplay", str(rec), str(run_dir),
                    str(timings)], env=env, check=True)
    process_s = time.perf_counter() - start
    t = json.loads(timings.read_text())
    k = str(ITERATIONS - 1)
    stages = t["stages"][k]
    wall = t["walls"][k]
    start_s = process_s - sum(t["walls"].values())
    return {"run_dir": run_dir, "wall_s": wall, "stages": stages, "work_s": sum(stages.values()),
            "process_s": process_s, "once_s": start_s, "first_wall_s": t["walls"]["0"],
            "pairs": _pairs_of(run_dir, ITERATIONS - 1)}


def _pairs_of(run_dir: Path, k: int) -> int:
    pairs = RunDir(run_dir).stage_record(k, Stage.PAIRS).as_dict().get("pairs")
    return int(pairs) if pairs is not None else -1


# ------------------------------------------------------------------------------------- script side
def prompts_of(run_dir: Path, k: int, out: Path) -> int:
    """The prompts selfplay sampled in iteration ``k``, as the generation script's JSONL input."""
    import pyarrow.parquet as pq

    table = pq.read_table(_iter_dir(run_dir, k) / "generations.parquet",
                          columns=["prompt_id", "prompt", "reference"]).to_pylist()
    seen, rows = set(), []
    for row in table:
        if row["prompt_id"] not in seen:
            seen.add(row["prompt_id"])
            rows.append(row)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def _iter_dir(run_dir: Path, k: int) -> Path:
    return RunDir.iter_dir(_RunRoot(run_dir), k)


class _RunRoot:
    """Just enough of a ``RunDir`` (its ``root``) to ask it where iteration ``k`` lives."""

    def __init__(self, root: Path):
        self.root = root


def _script(name: str, argv: list[str], env: dict[str, str], timings: Path) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(PIPELINE / name), *argv, "--timings", str(timings)], env=env, check=True)
    return time.perf_counter() - start, json.loads(timings.read_text())


def run_scripts(args: argparse.Namespace, work: Path, r: int, selfplay_run: Path, env: dict[str, str]
                ) -> dict[str, Any]:
    manifest = RunDir(selfplay_run).manifest
    model = Path(manifest.initial_policy or selfplay_run / "initial" / "policy")  # selfplay's start
    base = work / f"scripts-{r}"
    base.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    for k in range(ITERATIONS):
        d = base / f"iter_{k}"
        d.mkdir(exist_ok=True)
        prompts_of(selfplay_run, k, d / "prompts.jsonl")
        nxt = d / "policy"
        start = time.perf_counter()
        walls, work_s, info = {}, {}, {}
        walls["generate"], t = _script("generate.py", [
            "--model", str(model), "--prompts", str(d / "prompts.jsonl"), "--out", str(d / "samples.jsonl"),
            "--n", str(args.n), "--temperature", str(args.temperature), "--max-tokens", str(args.max_tokens),
            "--seed", str(args.seed * 100_003 + k)], env, d / "t_generate.json")
        work_s.update(t["work_s"])
        walls["score"], t = _script("score.py", ["--samples", str(d / "samples.jsonl"), "--out",
                                                 str(d / "pairs.jsonl")], env, d / "t_score.json")
        work_s.update(t["work_s"])
        info["pairs"] = t["pairs"]
        walls["train"], t = _script("train_dpo.py", [
            "--model", str(model), "--pairs", str(d / "pairs.jsonl"), "--out", str(nxt), "--batch", str(args.batch),
            "--lr", str(args.lr), "--beta", str(args.beta)], env, d / "t_train.json")
        work_s.update(t["work_s"])
        info["steps"] = t["steps"]
        wall = time.perf_counter() - start
        model = nxt  # (d) the next iteration reloads the saved checkpoint from disk
        result = {"wall_s": wall, "stages": work_s, "process_walls": walls, "work_s": sum(work_s.values()), **info}
    return result


# ------------------------------------------------------------------------------------------ report
def print_side(label: str, r: int, res: dict[str, Any]) -> None:
    over = res["wall_s"] - res["work_s"]
    parts = "  ".join(f"{k} {v:.2f}" for k, v in res["stages"].items())
    print(f"run {r} {label:<9}: iteration wall {res['wall_s']:7.2f} s = stage work {res['work_s']:7.2f} s "
          f"+ overhead {over:6.2f} s ({over / res['wall_s']:5.1%}); pairs {res.get('pairs')}", flush=True)
    print(f"    stages (s): {parts}", flush=True)
    if "process_walls" in res:
        print("    process walls (s): " + "  ".join(f"{k} {v:.2f}" for k, v in res["process_walls"].items()),
              flush=True)
    if "once_s" in res:
        print(f"    one-time start (Ray, actors, model build) {res['once_s']:.2f} s; iteration 0 "
              f"{res['first_wall_s']:.2f} s; whole process {res['process_s']:.2f} s", flush=True)


def ratio(selfplay: list[dict[str, Any]], scripts: list[dict[str, Any]]) -> float:
    """Script pipeline iteration wall over selfplay's, fastest run of each (a speed-up of selfplay)."""
    return min(s["wall_s"] for s in scripts) / min(s["wall_s"] for s in selfplay)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child_selfplay:
        child_selfplay(*args.child_selfplay)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_iteration_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        compare(args, work)
    finally:
        if args.workdir is None:  # a temp dir of ours: its runs and checkpoints (~0.5 GB a round) go with it
            shutil.rmtree(work, ignore_errors=True)


def compare(args: argparse.Namespace, work: Path) -> None:
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"SPIN on sorting, preset small, {args.prompts} prompts x n={args.n}, max {args.max_tokens} tokens, "
          f"batch {args.batch}, 1 epoch, {args.threads} thread(s) per process; selfplay shard size "
          f"{args.shard_size}; workdir {work}", flush=True)
    ours, theirs = [], []
    for r in range(args.repeats):
        ours.append(run_selfplay(args, work, r, env))
        print_side("selfplay", r, ours[-1])
        theirs.append(run_scripts(args, work, r, ours[-1]["run_dir"], env))
        print_side("scripts", r, theirs[-1])
    best_ours, best_theirs = min(ours, key=lambda x: x["wall_s"]), min(theirs, key=lambda x: x["wall_s"])
    for label, res in (("selfplay", best_ours), ("scripts", best_theirs)):
        over = res["wall_s"] - res["work_s"]
        print(f"{label:<9} best iteration {res['wall_s']:.2f} s, overhead {over:.2f} s ({over / res['wall_s']:.1%}) "
              f"(goal for selfplay: < 5%)")
    print(f"iteration ratio selfplay/script pipeline: {ratio(ours, theirs):.2f}x")


if __name__ == "__main__":
    main()
