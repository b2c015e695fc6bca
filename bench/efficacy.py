"""Does self-play training beat what users would run instead? Every arm tuned, then compared on test.

Each arm runs at its own tuned settings, from one start per seed, at one generation budget, and is scored
on held-out problems that no choice of settings ever saw.

    python -m bench.efficacy --tune                  # choose every arm's settings (validation half, seed 0)
    python -m bench.efficacy                         # the table: tuned settings, seeds 0 1 2, test half
    python -m bench.efficacy --quick                 # seed 0, six arms, tuned settings (the short check)
    python -m bench.efficacy --task all --tune       # the same for the quick start + two reasoning-gym tasks
    python -m bench.efficacy --task all
    python -m bench.efficacy --spin-regime           # SPIN against more SFT from an SFT plateau
    python -m bench.efficacy --recipe R.yaml --arms sft rft dpo_previous --seeds 0   # any verifier recipe
    python -m bench.efficacy --task all --tune --dry-run    # what a command would run, running nothing

Every run is the real pipeline: ``selfplay prepare`` makes each seed's start policy (the recipe's warm
start) and every arm is ``selfplay run`` from it (``policy.path``) with the arm's ``--set`` overrides
(``bench.efficacy_arms``), so arms differ only in what they do with the same samples budget
(``iterations x prompts_per_iteration x n``). Runs go ``--jobs`` at a time (default 2, one per core, one
thread each) and are reused when an identical one finished before (``bench.efficacy_runs``).

Honest tuning (``bench.efficacy_split``): the held-out prompts are split in two by a hash of their id.
``--tune`` (``bench.efficacy_tune``) runs each arm's search on seed 0 at ``TUNE_BUDGET`` and keeps the
settings with the best *validation* accuracy in ``bench/efficacy_tuned.yaml``; the table runs those on
seeds 0, 1 and 2 at ``TABLE_BUDGET`` and prints *test* accuracy only. An arm with no tuned settings runs
its search space's default point and the table marks it ``(untuned)``.

Tasks (``--task``, ``bench.efficacy_arms.TASKS``): ``quickstart`` (sorting, every arm) and two
reasoning-gym tasks on ``recipes/reasoning_gym.yaml`` (sft, rft, dpo_previous, the best other
preference arm by the quick start's tuned validation accuracy, spin). ``--recipe R`` runs any recipe
whose task has a verifier, as a task named after the file.

Measured per run (``bench.efficacy_report``): validation and test accuracy of the last evaluated
iteration; KL(start || final) on iteration 0's samples (drawn from the start policy, so at temperature 1
the estimate is unbiased); the mean change of the chosen log-prob over iteration 0's pairs; optimizer
steps; wall time of the ``selfplay run`` process. Output under ``--out``: per task ``starts/``, ``runs/``,
``results.json`` (the table's raw numbers) and ``tune.json`` (every tuning run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.efficacy_arms import (
    ALL_ARMS,
    PREFERENCE_ARMS,
    QUICK_ARMS,
    SPACES,
    TABLE_TASKS,
    TASKS,
    TaskRow,
    arm_overrides,
    describe,
    resolve_arms,
    settings_overrides,
)
from bench.efficacy_runs import ROOT, prepare_start, run_arm, start_sets
from bench.efficacy_tune import (
    STAGES,
    TUNE_BUDGET,
    TUNED_FILE,
    best_preference_arm,
    load_tuned,
    max_trials,
    record_arm,
    stage_settings,
    tuned_settings,
    write_tuned,
)

TABLE_BUDGET = ("iterations=3", "generation.prompts_per_iteration=2048")
"""The table's budget: 3 iterations of 2048 prompts (x the recipe's n samples), 30% of the quick start's."""
BEST_FROM = "quickstart"
"""The task whose tuned validation accuracies pick the reduced tasks' best preference arm."""


def task_rows(names: list[str], recipe: str | None) -> list[TaskRow]:
    if recipe is not None:
        path = Path(recipe).resolve()
        same = [t for t in TASKS.values() if (ROOT / t.recipe).resolve() == path and not t.overrides]
        return same or [TaskRow(path.stem, str(path), eval_prompts=None)]  # the recipe's own evaluation size
    names = list(TABLE_TASKS) if "all" in names else names
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise SystemExit(f"--task: unknown {unknown}; known: {', '.join(TASKS)}, all")
    return [TASKS[n] for n in names]


def task_arms(row: TaskRow, tuned: dict[str, Any], args: argparse.Namespace) -> tuple[str, ...]:
    """The arms to run on ``row``: --arms, else the task's (best arm resolved), narrowed by --quick."""
    if args.arms:
        return tuple(args.arms)
    others = tuple(a for a in PREFERENCE_ARMS if a not in row.arms)
    best = best_preference_arm(tuned, BEST_FROM, others)
    if best is None and others:
        best = "dpop"  # untuned: the quick start's own loss
        print(f"  {row.name}: no tuned {BEST_FROM} preference arm in the tuned file; the best-arm slot runs dpop "
              f"(tune {BEST_FROM} first)", flush=True)
    arms = resolve_arms(row.arms, best)
    return tuple(a for a in arms if a in QUICK_ARMS or a == best) if args.quick else arms


def one_core_each(jobs: int) -> list[str]:
    """Runs side by side get one generator replica and one thread each: `auto` would give every run all of
    the machine's cores (a replica per core), and ``jobs`` runs would then oversubscribe them."""
    return ["generation.replicas=1", "resources.threads_per_actor=1"] if jobs > 1 else []


class Plan:
    """One task's recipe, shared overrides, budget and prepared starts."""

    def __init__(self, row: TaskRow, args: argparse.Namespace, budget: tuple[str, ...]):
        from selfplay.config import load_config

        self.row, self.name = row, row.name
        self.recipe = (ROOT / row.recipe).resolve()
        self.out = Path(args.out).resolve() / row.name
        evals = [*row.eval_overrides(), *one_core_each(args.jobs)]
        self.common = [*evals, *row.overrides, *args.common]  # every run of the task, its starts too
        self.budget = list(budget)
        self.shared = [*evals, *row.overrides, *self.budget, *args.common]  # the user's --set wins
        self.base = load_config(self.recipe, self.shared)
        if self.base.task.type == "pairs":
            raise SystemExit(f"{self.recipe}: a `pairs` task has no held-out problems to score")
        self.starts: dict[int, dict[str, Any]] = {}

    def sets(self, arm: str, seed: int, settings: dict[str, Any]) -> list[str]:
        return [*self.shared, *start_sets(seed, self.starts[seed]), *arm_overrides(arm, self.base),
                *settings_overrides(arm, settings)]

    def run(self, arm: str, seed: int, settings: dict[str, Any], full: bool, **info: Any) -> dict[str, Any]:
        return run_arm(self.recipe, self.out, f"{arm}-s{seed}", self.sets(arm, seed, settings), self.starts[seed],
                       full=full, info={"task": self.name, "arm": arm, "seed": seed, "settings": settings, **info})


def prepare(plans: list[Plan], seeds: list[int], pool: ThreadPoolExecutor) -> None:
    jobs = [(p, s) for p in plans for s in seeds]
    for (p, s), start in zip(jobs, pool.map(lambda j: prepare_start(j[0].recipe, j[0].out, j[1], j[0].common), jobs)):
        p.starts[s] = start
        if start["validation"] is None and start["test"] is None:
            raise SystemExit(f"{p.recipe}: the start's evaluation has no verifier scores (see {start['run_dir']}); "
                             "bench.efficacy needs a task with a verifier and evaluation.num_prompts > 0")
        print(f"  {p.name} start seed {s}: validation {_f(start['validation'])}, test {_f(start['test'])}, "
              f"prepared in {start['seconds']:.0f} s", flush=True)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _report(i: int, n: int, r: dict[str, Any], what: str) -> None:
    state = "ok" if r["returncode"] == 0 else r.get("error") or f"FAILED (exit {r['returncode']})"
    print(f"  [{i}/{n}] {r['task']} seed {r['seed']} {r['arm']} {describe(r['settings'])}: {state}, "
          f"{what} {_f(r.get(what))}, {r['wall_s']:.0f} s{' (reused)' if r.get('reused') else ''}", flush=True)


def tune(plans: list[Plan], arms_of: dict[str, tuple[str, ...]], pool: ThreadPoolExecutor, tuned_path: Path,
         run: Callable[[Plan, str, dict[str, Any], str], dict[str, Any]] | None = None) -> None:
    """Every stage of every arm's search, all tasks' runs of a stage in one pool; the file after each stage.
    ``run(plan, arm, settings, stage)`` makes one tuning run (default: ``Plan.run`` on seed 0)."""
    run = run or (lambda p, a, s, stage: p.run(a, 0, s, False, stage=stage))
    tuned = load_tuned(tuned_path)
    trials: dict[tuple[str, str], list[dict[str, Any]]] = {(p.name, a): [] for p in plans for a in arms_of[p.name]}
    for stage in STAGES:
        jobs = [(p, a, s) for p in plans for a in arms_of[p.name]
                for s in stage_settings(SPACES[a], stage, trials[(p.name, a)])]
        print(f"  tune stage {stage}: {len(jobs)} runs", flush=True)
        futures = [pool.submit(run, p, a, s, stage) for p, a, s in jobs]
        for i, ((p, a, _), fut) in enumerate(zip(jobs, futures), 1):
            r = fut.result()
            trials[(p.name, a)].append(r)
            _report(i, len(jobs), r, "validation")
        for p in plans:
            info = {"recipe": str(p.recipe.relative_to(ROOT)) if p.recipe.is_relative_to(ROOT) else str(p.recipe),
                    "overrides": p.common, "budget": p.budget, "seed": 0,
                    "start_validation": p.starts[0]["validation"]}
            for a in arms_of[p.name]:
                record_arm(tuned, p.name, info, a, trials[(p.name, a)])
            (p.out / "tune.json").write_text(json.dumps([t for (n, _), ts in trials.items() if n == p.name
                                                         for t in ts], indent=2))
        write_tuned(tuned, tuned_path)
    for p in plans:
        for a in arms_of[p.name]:
            rec = tuned["tasks"].get(p.name, {}).get("arms", {}).get(a)
            print(f"  chosen {p.name} {a}: " + (f"{describe(rec['settings'])} (validation {rec['validation']:.3f})"
                                                if rec else "nothing scored"), flush=True)
    print(f"  tuned settings: {tuned_path}")


def table(plans: list[Plan], arms_of: dict[str, tuple[str, ...]], seeds: list[int], pool: ThreadPoolExecutor,
          tuned_path: Path) -> bool:
    from bench.efficacy_report import across_tasks, claims, print_results, write_plots

    tuned = load_tuned(tuned_path)
    jobs = []
    for p in plans:
        entry = tuned["tasks"].get(p.name, {})
        if entry and entry.get("overrides") != p.common:
            print(f"  {p.name}: tuned with overrides {entry.get('overrides')}, this table runs {p.common}: the "
                  "settings were chosen for another setup", flush=True)
        for a in arms_of[p.name]:
            settings = tuned_settings(tuned, p.name, a)
            if settings is None:
                print(f"  {p.name} {a}: no tuned settings in {tuned_path}; running the search's default "
                      f"({describe(SPACES[a].default())}), marked untuned", flush=True)
            jobs += [(p, a, s, settings or SPACES[a].default(), settings is not None) for s in seeds]
    futures = [pool.submit(p.run, a, s, st, True, tuned=ok) for p, a, s, st, ok in jobs]
    results = []
    for i, fut in enumerate(futures, 1):
        results.append(fut.result())
        _report(i, len(jobs), results[-1], "test")
    ok, by_task = True, {p.name: [r for r in results if r["task"] == p.name] for p in plans}
    for p in plans:
        mine = by_task[p.name]
        (p.out / "results.json").write_text(json.dumps({"starts": p.starts, "runs": mine}, indent=2))
        for path in write_plots(p.out, mine):
            print(f"  plot: {path}")
        b = p.base
        print(f"\n{p.name} ({p.recipe.name}; {b.iterations} iterations x {b.generation.prompts_per_iteration} prompts "
              f"x {b.generation.n} samples per arm; raw numbers in {p.out / 'results.json'})")
        print_results(arms_of[p.name], mine, p.starts)
        for line in claims(mine, "previous"):
            print(line)
        ok = ok and all(r["returncode"] == 0 for r in mine)
    if len(plans) > 1:
        print()
        for line in across_tasks(by_task):
            print(line)
    return ok


def dry_run(plans: list[Plan], arms_of: dict[str, tuple[str, ...]], seeds: list[int], tuned: dict[str, Any],
            tuning: bool) -> str:
    """What a command would run: starts, and per arm its runs (the search's most, when tuning) and settings."""
    lines, total = [f"  starts: {len(plans) * len(seeds)} (selfplay prepare; reused where done)"], 0
    for p in plans:
        for a in arms_of[p.name]:
            if tuning:
                n = max_trials(SPACES[a])
                lines.append(f"  {p.name} {a}: at most {n} tuning runs (seed 0)")
            else:
                n, settings = len(seeds), tuned_settings(tuned, p.name, a)
                lines.append(f"  {p.name} {a}: {n} run(s), " + (describe(settings) if settings else
                                                                 f"{describe(SPACES[a].default())} (untuned)"))
            total += n
    lines.append(f"  runs: {'at most ' if tuning else ''}{total}, {len(seeds)} seed(s); finished ones are reused")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", nargs="+", default=["quickstart"], help=f"{', '.join(TASKS)} or all")
    ap.add_argument("--recipe", help="any recipe with a verifier, instead of --task (a task named after the file)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--tune", action="store_true", help="search each arm's settings on the validation half")
    mode.add_argument("--quick", action="store_true", help="seed 0, the six quick arms, tuned settings")
    mode.add_argument("--spin-regime", action="store_true", help="SPIN vs more SFT from an SFT plateau")
    ap.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (0 with --quick and --tune)")
    ap.add_argument("--arms", nargs="+", choices=ALL_ARMS, help="default: the task's arms")
    ap.add_argument("--set", dest="common", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every run, the start included (e.g. to shrink sizes)")
    ap.add_argument("--budget", choices=("table", "recipe"), default="table",
                    help="table: TABLE_BUDGET (TUNE_BUDGET with --tune); recipe: the recipe's own")
    ap.add_argument("--tuned", default=str(TUNED_FILE), help="the tuned-settings file (read; written by --tune)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (default 2: one per core here)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "efficacy"), help="run directories and results")
    ap.add_argument("--dry-run", action="store_true", help="print the runs it would make, and run nothing")
    args = ap.parse_args(argv)
    if args.tune and args.seeds and args.seeds != [0]:
        raise SystemExit("--tune chooses on seed 0 only (the table's other seeds must not inform a choice)")
    seeds = args.seeds or ([0] if (args.quick or args.tune) else [0, 1, 2])
    budget = () if args.budget == "recipe" else TUNE_BUDGET if args.tune else TABLE_BUDGET
    tuned_path = Path(args.tuned).resolve()
    rows = task_rows(args.task, args.recipe)
    if args.spin_regime:
        from bench.efficacy_spin import spin_regime

        return spin_regime(rows, args, seeds, tuned_path)
    plans = [Plan(row, args, budget) for row in rows]
    tuned = load_tuned(tuned_path)
    arms_of = {p.name: task_arms(p.row, tuned, args) for p in plans}
    t0 = time.perf_counter()
    what = "tune" if args.tune else "quick" if args.quick else "table"
    print(f"efficacy {what}: seeds {seeds}, {args.jobs} at a time, out {Path(args.out).resolve()}", flush=True)
    for p in plans:
        b = p.base
        print(f"  {p.name} ({p.recipe.name}): arms {', '.join(arms_of[p.name])}; {b.iterations} iterations x "
              f"{b.generation.prompts_per_iteration} prompts x {b.generation.n} samples per arm", flush=True)
    if args.dry_run:
        print(dry_run(plans, arms_of, seeds, tuned, args.tune))
        return 0
    # The measurements' heavy imports happen here, once, before the pool's threads would race on them.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import selfplay.train.reference  # noqa: F401

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        prepare(plans, seeds, pool)
        if args.tune:
            tune(plans, arms_of, pool, tuned_path)
            ok = True
        else:
            ok = table(plans, arms_of, seeds, pool, tuned_path)
    print(f"  total wall time {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
