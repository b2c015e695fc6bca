"""The ``selfplay`` command line.

    selfplay run RECIPE [--run-dir D] [--set key=value ...] [--take-over]   run or resume a self-play run
    selfplay prepare RECIPE [--run-dir D] [--set ...] [--take-over]         only build/warm-start the policy
    selfplay status RUN_DIR [--json]                           per-iteration table
    selfplay report RUN_DIR [--out DIR]                        PNG plots
    selfplay compare RUN_DIR... [--plot PNG] [--json]          several runs: one table, one overlay plot
    selfplay validate RECIPE [--set ...] [--cluster [ADDR]]   check a recipe (and that it fits a Ray cluster)
    selfplay schema                                            every recipe field with its documentation
    selfplay train-rm PAIRS --base DIR --out DIR               fit a Bradley-Terry reward model

Heavy engines are imported only by the sub-commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from selfplay.config import ConfigError, dump_config, load_config
from selfplay.loop.ownership import OwnershipError, owner_line
from selfplay.loop.rundir import RunDir, RunDirError


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe (see recipes/)")
    p.add_argument("--run-dir", help="run directory (default: runs/<name>); an existing one is resumed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set train.loss.beta=0.2 (repeatable)")
    p.add_argument("--take-over", action="store_true",
                   help="take the run directory over from a driver whose heartbeat is stale (its node lost); "
                        "a live driver is never taken over, and a dead one on this host is taken without it")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfplay", description="Iterative self-play preference training.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_recipe_args(sub.add_parser("run", help="run or resume a recipe"))
    _add_recipe_args(sub.add_parser("prepare", help="build and warm-start the starting policy only"))
    v = sub.add_parser("validate", help="validate a recipe and print it resolved")
    v.add_argument("recipe")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--cluster", nargs="?", const="auto", metavar="ADDRESS",
                   help="also check that every actor of the recipe fits the Ray cluster at ADDRESS "
                        "(default: RAY_ADDRESS, or a running local cluster); prints the placement plan")
    s = sub.add_parser("status", help="per-iteration table of a run directory")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    r = sub.add_parser("report", help="PNG plots of a run directory")
    r.add_argument("run_dir")
    r.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    c = sub.add_parser("compare", help="several runs side by side: one table and one overlay plot")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--plot", default="compare.png", help="overlay plot to write (default: compare.png)")
    c.add_argument("--no-plot", action="store_true", help="print the table only")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("schema", help="list every recipe field with its documentation")
    t = sub.add_parser("train-rm", help="fit a Bradley-Terry reward model on a pairs file")
    t.add_argument("pairs", help="parquet/jsonl with prompt, chosen, rejected")
    t.add_argument("--base", required=True, help="HF model directory to start from")
    t.add_argument("--out", required=True, help="where to write the reward model")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--seed", type=int, default=0)
    return parser


class UsageError(ValueError):
    """A command-line input that cannot be used; the message names it and what is allowed."""


def _check_train_rm(args: argparse.Namespace) -> None:
    from selfplay.models.check import model_dir_problems

    problems = []
    pairs = Path(args.pairs)
    if not pairs.is_file():
        problems.append(f"PAIRS: {pairs} does not exist (a .parquet or .jsonl file with prompt, chosen, rejected)")
    elif pairs.suffix not in (".parquet", ".jsonl", ".json"):
        problems.append(f"PAIRS: {pairs} must be a .parquet or .jsonl file")
    base = Path(args.base)
    if not (base / "config.json").is_file():
        problems.append(f"--base: {base} is not a Hugging Face model directory (no config.json)")
    else:
        problems.extend(f"--base: {p}" for p in model_dir_problems(base, kind="classifier"))
    if problems:
        raise UsageError("train-rm: " + "; ".join(problems))


def _run_dir(cfg, arg: str | None, source: str) -> Path:
    """``--run-dir``, else the recipe's ``run_dir``, else ``runs/<name>``: a name is one folder inside
    ``runs/`` (a ``/`` or ``..`` in it would write somewhere else)."""
    if arg or cfg.run_dir:
        return Path(arg or cfg.run_dir)
    name = cfg.name
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(source, [f"name: {name!r} is not a plain folder name (no '/', '\\' or '..'); it "
                                     "names the run directory runs/<name>. Use --run-dir to write elsewhere"])
    return Path("runs") / name


def _check_cluster(cfg, source: str, address: str) -> None:
    """Join the cluster at ``address`` and refuse the recipe if its actors cannot all be placed there."""
    import ray

    from selfplay.loop.placement import check_cluster, describe, plan_groups

    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise ConfigError(source, [f"--cluster: no Ray cluster to join at {address!r} ({exc}); start one or "
                                       "pass its address (or set RAY_ADDRESS)"]) from None
    result = check_cluster(cfg, source=source)
    print(f"# placement on this cluster ({len(ray.nodes())} node(s)): fits", file=sys.stderr)
    print(describe(result, plan_groups(cfg)), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe (`selfplay status ... | head`) is noticed here, not at exit
        return code
    except BrokenPipeError:  # the reader stopped reading (`| head`): end quietly, with rich's exit status 1
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit goes nowhere
        return 1
    except (ConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from selfplay.loop.runtime import StageError

        if not isinstance(exc, StageError | RunDirError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, OwnershipError):
            pass  # the message says what to do
        elif isinstance(exc, StageError):
            print("finished stages and earlier iterations are kept; fix the cause and rerun to resume (a changed "
                  "generation, judge, pairing, train or sync setting is taken: the iteration is redone from the "
                  "first stage it affects)", file=sys.stderr)
        elif args.command in ("run", "prepare"):
            print("nothing was changed; fix the cause and rerun to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; run the same command again to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from selfplay.env import setup_env

    setup_env()
    if args.command == "schema":
        from selfplay.config.docs import schema_text

        print(schema_text())
        return 0
    if args.command == "validate":
        cfg = load_config(args.recipe, args.overrides)
        print(dump_config(cfg), end="")
        if args.cluster is not None:
            _check_cluster(cfg, args.recipe, args.cluster)
        return 0
    if args.command == "status":
        from selfplay.loop.status import status_rows, status_table

        if args.json:
            print(json.dumps(status_rows(args.run_dir), indent=2))
        else:
            status_table(args.run_dir)
            print(owner_line(args.run_dir))  # reads the owner record only: never takes it, never waits
        return 0
    if args.command == "report":
        from selfplay.loop.report import write_report

        if not RunDir(args.run_dir).exists:  # checked first: a mistyped path must not get a report/ folder
            raise RunDirError(f"{args.run_dir} has no manifest.json: not a selfplay run directory")
        for path in write_report(args.run_dir, args.out):
            print(path)
        return 0
    if args.command == "compare":
        from selfplay.loop.compare import compare_main

        return compare_main(args.run_dirs, None if args.no_plot else args.plot, as_json=args.json)
    if args.command == "train-rm":
        from selfplay.judges.train_rm import train_reward_model

        _check_train_rm(args)
        metrics = train_reward_model(args.pairs, args.base, args.out, epochs=args.epochs, lr=args.lr,
                                     batch_size=args.batch_size, seed=args.seed)
        print(json.dumps(metrics, indent=2, default=str))
        return 0
    cfg = load_config(args.recipe, args.overrides)
    from selfplay.loop.driver import prepare_only, run

    run_dir = _run_dir(cfg, args.run_dir, args.recipe)
    if args.command == "prepare":
        prepare_only(cfg, run_dir, source=args.recipe, take_over=args.take_over)
    else:
        run(cfg, run_dir, source=args.recipe, take_over=args.take_over)
    return 0


if __name__ == "__main__":
    sys.exit(main())
