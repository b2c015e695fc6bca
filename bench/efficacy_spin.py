"""``python -m bench.efficacy --spin-regime``: SPIN against more SFT where SPIN's paper makes its claim.

Chen et al. 2024 start SPIN from zephyr-7b-sft-full, a model already fine-tuned on UltraChat, and run it
on prompts of that same SFT data: the claim is that SPIN improves a policy that further SFT on its data
no longer improves. The main table starts every arm from a short warm start, where more SFT still
gains, so it does not test that. This mode does, per seed:

1. **Plateau.** A fixed prompt set stands for the SFT data (``TaskRow.spin_prompts`` prompts,
   ``generation.prompt_source: fixed``, the same in every iteration). Continued SFT on its reference
   answers (the ``sft`` arm, at its tuned settings) runs ``ITERATIONS`` rounds from the seed's start,
   evaluated after each. The plateau is the first iteration whose *validation* accuracy is within
   ``PLATEAU_TOLERANCE`` of the best of them.
2. **From the plateau**, ``spin`` and ``sft`` each run ``ITERATIONS`` more rounds on the same prompt set
   at their tuned settings. Both build their rows the same way (judge ``sft``, pairing ``reference``, one
   row per prompt whose sample differs from the reference), SPIN with the sample as rejected side and SFT
   without it, so their optimizer steps are equal up to the rows their own samples drop; the output
   prints both.

The verdict compares test accuracy over the seeds (two standard errors, as the table's claims).

The fixed set is the first ``spin_prompts`` of a seeded shuffle of the task's training pool, whose size
the loop derives from ``prompts_per_iteration x iterations`` (at least 1000). So the plateau run and the
runs after it have the same ``iterations`` and the same prompts per iteration: then they draw the same
pool and the same fixed set (``pool_size`` checks it).
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.efficacy_tune import load_tuned, tuned_settings

PLATEAU_TOLERANCE = 0.01
ITERATIONS = 4


def pool_size(cfg) -> int:
    """The training pool the loop's task factory draws for ``cfg`` (``selfplay.loop.factory``'s rule for
    a run without a warm start), of which ``fixed`` takes its prompts."""
    return max(1000, cfg.generation.prompts_per_iteration * cfg.iterations)


def plateau_iteration(curve: list[float | None], tolerance: float = PLATEAU_TOLERANCE) -> int | None:
    """The first index whose value is within ``tolerance`` of the curve's best (None: nothing scored)."""
    scored = [v for v in curve if v is not None]
    if not scored:
        return None
    top = max(scored)
    return next(i for i, v in enumerate(curve) if v is not None and v >= top - tolerance)


def validation_curve(run_dir: Path) -> list[float | None]:
    """Validation accuracy after each iteration of a run (None where it was not evaluated)."""
    from bench.efficacy_split import eval_table_scores

    curve = []
    for it in sorted(Path(run_dir).glob("iter_*")):
        table = it / "eval_generations.parquet"
        curve.append(eval_table_scores(table)["validation"]["accuracy"] if table.exists() else None)
    return curve


def spin_regime(rows, args: argparse.Namespace, seeds: list[int], tuned_path: Path) -> int:
    tuned = load_tuned(tuned_path)
    ok = [_one_task(row, args, seeds, tuned) for row in rows]
    return 0 if all(ok) else 1


def _one_task(row, args: argparse.Namespace, seeds: list[int], tuned: dict) -> bool:
    from bench.efficacy import Plan, prepare
    from bench.efficacy_arms import SPACES, describe
    from bench.efficacy_report import _compare, _verdict, min_seeds, summarise, table_lines

    regime = ("generation.prompt_source=fixed", f"generation.prompts_per_iteration={row.spin_prompts}",
              f"iterations={ITERATIONS}")
    plateau_plan, after_plan = Plan(row, args, regime), Plan(row, args, regime)
    if pool_size(plateau_plan.base) != 1000:
        raise SystemExit(f"--spin-regime: {row.spin_prompts} prompts x {ITERATIONS} iterations is over the "
                         "1000-problem pool that keeps the fixed set the same in every run; use fewer")
    settings = {a: tuned_settings(tuned, row.name, a) or SPACES[a].default() for a in ("sft", "spin")}
    untuned = [a for a in settings if tuned_settings(tuned, row.name, a) is None]
    print(f"spin regime on {row.name}: sft {describe(settings['sft'])}, spin {describe(settings['spin'])}"
          + (f" ({', '.join(untuned)} untuned)" if untuned else ""), flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        prepare([plateau_plan], seeds, pool)
        plateaus = list(pool.map(lambda s: plateau_plan.run("sft", s, settings["sft"], False, phase="plateau"),
                                 seeds))
        for seed, r in zip(seeds, plateaus):
            curve = validation_curve(Path(r["run_dir"])) if r["returncode"] == 0 else []
            k = plateau_iteration(curve)
            if k is None:
                raise SystemExit(f"seed {seed}: the plateau run failed or was not evaluated; see {r['run_dir']}")
            after_plan.starts[seed] = {**plateau_plan.starts[seed], "test": None, "plateau_iteration": k,
                                       "plateau_curve": curve,
                                       "policy": str(Path(r["run_dir"]) / f"iter_{k:03d}" / "policy")}
            print(f"  seed {seed}: validation by SFT round {' '.join(f'{v:.3f}' for v in curve if v is not None)}; "
                  f"plateau at round {k}", flush=True)
        jobs = [(a, s) for s in seeds for a in ("sft", "spin")]
        results = list(pool.map(lambda j: after_plan.run(j[0], j[1], settings[j[0]], True, tuned=not untuned),
                                jobs))
    out = after_plan.out / "spin_regime.json"
    out.write_text(json.dumps({"plateaus": {s: after_plan.starts[s] for s in seeds}, "runs": results}, indent=2))
    summary = summarise(results)
    print(f"\nSPIN regime, {row.name} ({len(seeds)} seed(s); gain is over the plateau; raw numbers in {out})")
    for line in table_lines(("sft", "spin"), summary):
        print(line)
    c = _compare(summary, "spin", "sft")
    steps = {a: summary.get(a, {}).get("steps", {}).get("mean") for a in ("sft", "spin")}
    if c is None or None in steps.values():
        print("- SPIN beats more SFT from an SFT plateau: not measured (runs failed)")
    else:
        n = min_seeds(summary)
        print(f"- SPIN beats more SFT from an SFT plateau (mean steps: spin {steps['spin']:.0f}, "
              f"sft {steps['sft']:.0f}): test {c[0]:+.3f} -> {_verdict(c[0] > 0, c[1], n)}")
    return all(r["returncode"] == 0 for r in results)
