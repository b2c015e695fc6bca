"""Does self-play training beat what users would run instead? One start, one generation budget, 3 seeds.

    python -m bench.efficacy                     # every arm, seeds 0 1 2, at the full table's budget
    python -m bench.efficacy --quick             # seed 0, the six arms the three claims need
    python -m bench.efficacy --budget recipe     # the full table at the recipe's own budget (~2 h here)
    python -m bench.efficacy --set evaluation.num_prompts=200 --arms sft spin --seeds 0 1

Every arm is the real pipeline: ``selfplay run`` on the quick-start recipe (``--recipe``, default
``recipes/quickstart.yaml``) plus that arm's ``--set`` overrides, so the recipe's task, model, sizes and
optimiser settings are the benchmark's. Per seed the starting policy is made once (``selfplay prepare``,
with the recipe's warm start) and every arm starts from it (``policy.path``, no warm start), so arms
differ only in what they do with the same samples budget (``iterations x prompts_per_iteration x n``).

Arms (overrides on the recipe; everything not named is the recipe's):

* ``sft``: continued SFT on the reference answers of the same prompts (judge ``sft``, pairing
  ``reference`` capped at one row per prompt, loss ``sft``): SPIN's rows with the rejected side dropped,
  hence the same number of optimizer steps as ``spin``.
* ``rft``: rejection-sampling fine-tuning (pairing ``best``, loss ``sft``): SFT on each prompt's first
  verified-correct sample (RAFT / ReST / STaR).
* ``dpo_offline``: DPO on pairs sampled once from the start policy: one iteration over all
  ``iterations x prompts_per_iteration`` prompts (same budget, about the same number of steps).
* ``dpo_previous`` / ``dpo_initial``: iterative DPO with the previous / the initial policy as reference.
* ``spin``: SPIN (judge ``sft``, the reference answer against one differing sample per prompt, DPO loss,
  reference ``previous``).
* ``ipo``, ``dpop``, ``kto``: those losses with the recipe's beta; ``simpo`` with the SimPO paper's
  beta 2.0 and gamma/beta 0.5 (at beta 0.1 its margin term vanishes).

Budget: ``--quick`` runs the recipe's own (the quick start: 5 iterations of 4096 prompts x 8 samples),
so its ``dpop`` arm is the quick start itself. The full table is 30 runs, about two hours at that
budget on two cores, so by default it runs at ``FULL_TABLE_BUDGET``: 3 iterations of 2048 prompts (the
same samples per prompt), 30% of the samples, which fits the hour. ``--budget recipe`` keeps the
recipe's. Every arm of a table has the same budget either way, and the header line says which it is.

Measured per run: the last evaluated held-out accuracy; KL(start || final) estimated on iteration 0's
samples (drawn from the start policy at the recipe's temperature, so at temperature 1 the estimate is
unbiased); the mean change of the chosen log-prob over iteration 0's pairs (log pi_final - log pi_start,
the quantity the DPOP paper tracks); total optimizer steps; wall time of the ``selfplay run`` process.
Arms run as separate ``selfplay run`` processes, ``--jobs`` at a time (default 2: one per core; each run's
actors use one thread). Each run is a Ray driver with its own local Ray, exactly as a user runs it, so
processes rather than tasks of one shared Ray are what keeps the arms independent. Results and run
directories stay under ``--out``: rerunning the same command reuses finished runs, and
``selfplay compare OUT/seed0/*/`` shows any seed's runs side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_MEASURE = threading.Lock()
FULL_TABLE_BUDGET = ("iterations=3", "generation.prompts_per_iteration=2048")
ALL_ARMS = ("sft", "rft", "dpo_offline", "dpo_previous", "dpo_initial", "spin", "ipo", "dpop", "simpo", "kto")


def quick_arms(reference: str) -> tuple[str, ...]:
    """The arms the three claims compare; the DPO arm matches the recipe's reference (DPOP's too)."""
    return ("sft", "spin", "dpo_offline", f"dpo_{reference}", "dpop", "rft")


def arm_overrides(arm: str, base: Any) -> list[str]:
    """``--set`` overrides that turn the recipe ``base`` (a RunConfig) into ``arm``."""
    loss = lambda kind, *extra: [f"train.loss.type={kind}", "train.loss.params={}", *extra]
    spin_rows = ["judge.type=sft", "pairing.strategy=reference", "pairing.max_pairs_per_prompt=1"]
    budget = base.iterations * base.generation.prompts_per_iteration
    table = {
        "sft": [*spin_rows, *loss("sft")],
        "rft": ["pairing.strategy=best", *loss("sft")],
        "dpo_offline": [*loss("sigmoid"), "iterations=1", f"generation.prompts_per_iteration={budget}",
                        "train.reference=initial"],
        "dpo_previous": [*loss("sigmoid"), "train.reference=previous"],
        "dpo_initial": [*loss("sigmoid"), "train.reference=initial"],
        "spin": [*spin_rows, *loss("sigmoid"), "train.reference=previous"],
        "ipo": loss("ipo"),
        "dpop": loss("dpop"),
        "simpo": [*loss("simpo"), "train.loss.beta=2.0", "train.loss.params={gamma: 1.0}"],
        "kto": loss("kto"),
    }
    if arm not in table:
        raise ValueError(f"--arms: unknown arm {arm!r}; known: {', '.join(ALL_ARMS)}")
    out = table[arm]
    if arm not in ("sft", "spin") and base.judge is not None and base.judge.type == "sft":
        raise ValueError(f"arm {arm}: the recipe's judge is `sft`; the preference arms need a verifier")
    if arm not in ("sft", "spin", "rft") and base.pairing_strategy in ("reference", "best"):
        out = ["pairing.strategy=best_worst", *out]
    return out


# -------------------------------------------------------------------------------------- processes
def _selfplay(args: list[str], log: Path, threads: int = 1) -> tuple[int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "selfplay.cli", *args], cwd=ROOT, env=env, stdout=f,
                              stderr=subprocess.STDOUT, start_new_session=True)
    return proc.returncode, time.perf_counter() - start


def prepare_start(recipe: Path, out: Path, seed: int, common: list[str]) -> dict[str, Any]:
    """``selfplay prepare`` for one seed (reused when done); the start policy's path and accuracy."""
    from selfplay.loop.compare import run_summary
    from selfplay.loop.rundir import RunDir

    run_dir = out / f"seed{seed}" / "start"
    rc, seconds = _selfplay(["prepare", str(recipe), "--run-dir", str(run_dir), "--set", f"seed={seed}",
                             *sum((["--set", o] for o in common), [])], out / f"seed{seed}" / "start.log")
    rd = RunDir(run_dir)
    if rc != 0 or not rd.manifest.get("prepared"):
        raise RuntimeError(f"seed {seed}: selfplay prepare failed (exit {rc}); see {out}/seed{seed}/start.log")
    return {"seed": seed, "policy": rd.manifest["initial_policy"], "accuracy": run_summary(run_dir)["start"],
            "seconds": seconds}


def run_arm(recipe: Path, out: Path, seed: int, arm: str, start: dict[str, Any], overrides: list[str],
            common: list[str]) -> dict[str, Any]:
    """One arm on one seed: ``selfplay run`` from the start policy, then the measurements (cached)."""
    from bench.efficacy_report import measure

    run_dir, cache = out / f"seed{seed}" / arm, out / f"seed{seed}" / f"{arm}.result.json"
    if cache.exists():
        return json.loads(cache.read_text())
    ran = out / f"seed{seed}" / f"{arm}.run.json"  # a finished run keeps its wall time for a rerun
    if ran.exists():
        rc, seconds = 0, json.loads(ran.read_text())["wall_s"]
    else:
        sets = [*common, f"seed={seed}", f"policy.path={start['policy']}", "policy.preset=null",
                "policy.warmstart=null", *overrides]
        rc, seconds = _selfplay(["run", str(recipe), "--run-dir", str(run_dir),
                                 *sum((["--set", s] for s in sets), [])], out / f"seed{seed}" / f"{arm}.log")
        if rc == 0:
            ran.write_text(json.dumps({"wall_s": seconds}))
    result = {"arm": arm, "seed": seed, "returncode": rc, "wall_s": round(seconds, 1), "overrides": overrides}
    try:
        with _MEASURE:  # one at a time: HF loading is not thread-safe, and the runs need the cores more
            result.update(measure(run_dir, start["policy"], rc == 0))
    except Exception as exc:  # a measurement bug must not discard an hour of runs: report it per run
        result.update(returncode=rc or -1, error=f"measurement failed: {type(exc).__name__}: {exc}")
        return result
    if rc == 0:
        cache.write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    # The measurements' heavy imports happen here, once, before the pool's threads would race on them.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import selfplay.train.reference  # noqa: F401
    from bench.efficacy_report import claims, print_results, write_plots
    from selfplay.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    ap.add_argument("--quick", action="store_true", help="seed 0 and the six arms the claims need")
    ap.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (0 with --quick)")
    ap.add_argument("--arms", nargs="+", choices=ALL_ARMS, help="default: all (the claims' six with --quick)")
    ap.add_argument("--set", dest="common", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every run, the start included (e.g. to shrink sizes)")
    ap.add_argument("--budget", choices=("table", "recipe"), default=None,
                    help="table: FULL_TABLE_BUDGET (the full table's default); recipe: the recipe's own "
                         "(--quick's default)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (default 2: one per core here)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "efficacy"), help="run directories and results")
    args = ap.parse_args(argv)
    recipe, out = Path(args.recipe).resolve(), Path(args.out).resolve()
    budget = args.budget or ("recipe" if args.quick else "table")
    if budget == "table":  # before the user's --set, so theirs win
        args.common = [*FULL_TABLE_BUDGET, *args.common]
    base = load_config(recipe, args.common)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    arms = args.arms or (quick_arms(base.train.reference) if args.quick else ALL_ARMS)
    plan = {arm: arm_overrides(arm, base) for arm in arms}
    t0 = time.perf_counter()
    print(f"efficacy: {recipe.name}, seeds {seeds}, arms {', '.join(arms)}, {args.jobs} at a time, out {out}",
          flush=True)
    print(f"  budget ({budget}): {base.iterations} iterations x {base.generation.prompts_per_iteration} prompts"
          f" x {base.generation.n} samples per arm", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        starts = {s["seed"]: s for s in pool.map(lambda s: prepare_start(recipe, out, s, args.common), seeds)}
        for s in starts.values():
            print(f"  start seed {s['seed']}: accuracy {s['accuracy']}, prepared in {s['seconds']:.0f} s", flush=True)
        jobs = [(seed, arm) for seed in seeds for arm in arms]
        futures = [pool.submit(run_arm, recipe, out, seed, arm, starts[seed], plan[arm], args.common)
                   for seed, arm in jobs]
        results = []
        for i, fut in enumerate(futures, 1):
            r = fut.result()
            results.append(r)
            state = "ok" if r["returncode"] == 0 else r.get("error") or f"FAILED (exit {r['returncode']})"
            acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.3f}"
            print(f"  [{i}/{len(jobs)}] seed {r['seed']} {r['arm']}: {state}, accuracy {acc}, {r['wall_s']:.0f} s",
                  flush=True)
    (out / "results.json").write_text(json.dumps({"starts": starts, "runs": results}, indent=2))
    for path in write_plots(out, seeds, arms):
        print(f"  plot: {path}")
    print(f"  total wall time {time.perf_counter() - t0:.0f} s; raw numbers in {out / 'results.json'}")
    print_results(arms, results, starts)
    for line in claims(results, base.train.reference):  # the last lines: what held at this scale
        print(line)
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
