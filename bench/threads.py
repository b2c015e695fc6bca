"""The same DPO round at N threads in-process, in-process beside an idle local Ray, and as a Ray actor;
and what an idle actor costs the busy one.

    python -m bench.threads [--threads 2] [--pairs 64] [--batch 8] [--repeats 2] [--wait unset passive active]
    python -m bench.threads --generation [--threads 2] [--prompts 512] [--repeats 2]

Why: at two threads on two cores the learner as a Ray actor trained ``bench.iteration``'s SPIN round
slower than the same learner in its own process (issue 28). Each run is a fresh child process (so the
OpenMP settings apply before torch loads), on the ``small`` preset (char tokenizer, built offline) and
``bench.learner``'s pairs, reference log-probs computed untimed first. Modes, alternated so that load
drift hits all of them:

* ``inproc``: ``Learner`` in the child process.
* ``inproc+ray``: the same, with a local Ray (as a run embeds it) started and idle beside it.
* ``actor``: ``LearnerGroup`` with one rank in a Ray actor (what ``selfplay run`` does).

``--wait`` sets libgomp's ``OMP_WAIT_POLICY`` for every process of the run (``unset``: libgomp's default,
a spin of 300,000 before sleeping, written out as ``GOMP_SPINCOUNT`` because selfplay's ``setup_env``
otherwise makes it ``PASSIVE``). Printed per run: the round's seconds timed inside the learner
process (``inner``) and by the caller (``outer``, which adds the driver-to-actor call), the learner
process's involuntary context switches over all its threads during the round, the CPU seconds Ray's own
processes (raylet, GCS, agents, idle workers) used during it, and, after the round, the CPU seconds the
idle learner process used over ``--idle-s`` seconds (what an idle actor takes from a busy one).
``--idle-engine`` adds the same idle check for a vLLM generator actor after one generate call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selfplay.env import embedded_ray_environment, setup_env
from selfplay.generate.types import Sampling
from selfplay.models.build import build_policy

# Ray, the actors, torch and the selfplay modules that load torch are imported inside the functions that use
# them: each child process sets its OpenMP and thread settings (setup_env) before torch loads.

MODES = ("inproc", "inproc+ray", "actor")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="rounds over every (mode, wait policy)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--wait", nargs="+", default=["unset"], choices=["unset", "passive", "active"])
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--idle-engine", action="store_true", help="also measure an idle vLLM generator actor")
    ap.add_argument("--generation", action="store_true",
                    help="instead: generation at --threads replicas x 1 thread against 1 replica x --threads threads")
    ap.add_argument("--prompts", type=int, default=512, help="with --generation")
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "MODE", "OUT"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------ /proc readings
def ctx_switches(pid: int) -> int:
    """Involuntary context switches of every thread of ``pid`` (``/proc/<pid>/status`` counts one thread)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ray_processes(temp_dir: str, exclude: set[int]) -> dict[int, str]:
    """pid -> name of this Ray's own processes: those whose command line names its temp directory (GCS,
    raylet, agents, log monitor) and everything they started (workers), the learner's ``exclude``d."""
    import psutil

    found: dict[int, str] = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        if temp_dir in " ".join(proc.info["cmdline"] or []):
            for p in [proc, *proc.children(recursive=True)]:
                found[p.pid] = " ".join(p.cmdline()[:1])[-28:] or p.name()
    return {pid: name for pid, name in found.items() if pid not in exclude}


def cpu_of(pids: dict[int, str]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            out[pid] = cpu_seconds(pid)
    return out


# ------------------------------------------------------------------------------------------- child
def child(model: str, mode: str, out: str, args: argparse.Namespace) -> None:
    import pyarrow as pa

    from bench.learner import make_pairs
    from selfplay.config.schema import ResourcesConfig, TrainConfig

    setup_env(args.threads)
    cfg = TrainConfig(learning_rate=1e-6, micro_batch_size=args.batch, epochs=1, warmup_ratio=0.0,
                      lr_schedule="constant", max_grad_norm=1.0)
    rows = [{**p, "prompt": json.dumps([{"role": "user", "content": p["prompt"]}])} for p in make_pairs(args.pairs)]
    session = None
    if mode != "inproc":
        import ray

        ray_env = contextlib.ExitStack()  # held until this process ends: a run's embedded Ray settings (a
        ray_env.enter_context(embedded_ray_environment())  # token of its own, nothing written to ~/.ray)
        session = tempfile.mkdtemp(prefix="sp-bt-", dir="/tmp")
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=session)
    if mode == "actor":
        from actors.learner import LearnerGroup

        learner = LearnerGroup(model, cfg, num_learners=1, resources=ResourcesConfig(threads_per_actor=args.threads))
        pid = learner.info()[0]["pid"]
    else:
        from selfplay.train import Learner

        learner = Learner(model, cfg, threads=args.threads)
        pid = os.getpid()
    table = learner.compute_reference(pa.Table.from_pylist(rows))
    daemons = ray_processes(session, {pid, os.getpid()}) if session else {}
    before_cpu, before_ctx = cpu_of(daemons), ctx_switches(pid)
    t0 = time.perf_counter()
    summary = learner.train_round(table)
    outer = time.perf_counter() - t0
    after_cpu, after_ctx = cpu_of(daemons), ctx_switches(pid)
    spent = {daemons[p]: round(after_cpu[p] - before_cpu[p], 3) for p in after_cpu if p in before_cpu}
    idle0 = cpu_seconds(pid)
    time.sleep(args.idle_s)
    idle = cpu_seconds(pid) - idle0
    record = {"mode": mode, "wait": os.environ.get("OMP_WAIT_POLICY", "spin"), "outer_s": round(outer, 3),
              "inner_s": summary.get("seconds"), "steps": summary.get("steps"), "ctx": after_ctx - before_ctx,
              "ray_cpu_s": round(sum(spent.values()), 3), "ray_top": sorted(spent.items(), key=lambda kv: -kv[1])[:4],
              "idle_cpu_s": round(idle, 3), "load": os.getloadavg()[0]}
    if args.idle_engine and mode == "actor":
        record["idle_engine_cpu_s"] = idle_engine(model, args.idle_s)
    Path(out).write_text(json.dumps(record))


def idle_engine(model: str, idle_s: float) -> float:
    """CPU seconds one vLLM generator actor uses over ``idle_s`` seconds after a generate call."""
    from actors.generator import GeneratorPool
    from selfplay.config.schema import GenerationConfig, ResourcesConfig

    pool = GeneratorPool(model, GenerationConfig(replicas=1, max_model_len=128), ResourcesConfig(), dtype="float32")
    pool.generate([f"sort: {i},{i + 3},1" for i in range(16)], Sampling(n=2, max_tokens=16, temperature=1.0))
    pid = pool.info()[0]["pid"]
    c0 = cpu_seconds(pid)
    time.sleep(idle_s)
    return round(cpu_seconds(pid) - c0, 3)


def generation_ab(args: argparse.Namespace) -> None:
    """Generation on the quick start's shape (``nano``, n=8, 14 tokens): R replicas x 1 thread against
    1 replica x R threads (R = ``--threads``), both pools held at once and called alternately."""
    import ray

    from actors.generator import GeneratorPool
    from selfplay.config.schema import GenerationConfig, ResourcesConfig

    setup_env(1)
    model = build_policy(Path(tempfile.mkdtemp(prefix="bench-threads-")) / "nano", preset="nano", tokenizer="char")
    prompts = [[{"role": "user", "content": f"Sort ascending: {i % 97}, {i * 7 % 89}, {i * 13 % 83}"}]
               for i in range(args.prompts)]
    sampling = Sampling(n=8, temperature=0.7, max_tokens=14, seed=0)
    r = args.threads
    with embedded_ray_environment():
        ray.init(num_cpus=2 * r + 2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="sp-bt-", dir="/tmp"))
        shard = max(1, args.prompts // (2 * r))
        pools = {f"{r} replicas x 1 thread": GeneratorPool(model, GenerationConfig(replicas=r, max_model_len=128,
                                                           shard_size=shard), ResourcesConfig(threads_per_actor=1)),
                 f"1 replica x {r} threads": GeneratorPool(model, GenerationConfig(replicas=1, max_model_len=128,
                                                           shard_size=shard), ResourcesConfig(threads_per_actor=r))}
        print(f"# generation: nano, {args.prompts} prompts x n=8 x <= 14 tokens, shards of {shard}", flush=True)
        for pool in pools.values():  # warm-up
            pool.generate(prompts[:shard], sampling, shard_dir=Path(tempfile.mkdtemp()))
        for _ in range(args.repeats):
            for name, pool in pools.items():
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                out, _ = pool.generate(prompts, sampling, shard_dir=Path(tempfile.mkdtemp()))
                tokens = sum(len(c.token_ids) for group in out for c in group)
                print(f"{name:24s} {time.perf_counter() - t0:7.2f}s {tokens} tokens load {load:.1f}", flush=True)
        ray.shutdown()


# ------------------------------------------------------------------------------------------ parent
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(*args.child, args)
        return
    if args.generation:
        generation_ab(args)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    model = str(build_policy(work / "model", preset="small", tokenizer="char"))
    passed = [f"--threads={args.threads}", f"--pairs={args.pairs}", f"--batch={args.batch}", f"--idle-s={args.idle_s}",
              *(["--idle-engine"] if args.idle_engine else [])]
    print(f"# bench.threads: small preset, {args.pairs} pairs, batch {args.batch}, {args.threads} thread(s); "
          f"{os.cpu_count()} cores")
    for r in range(args.repeats):
        for wait in args.wait:
            for mode in args.modes:
                out = work / f"{r}-{wait}-{mode}.json"
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                env.pop("OMP_WAIT_POLICY", None)
                if wait == "unset":  # libgomp's own default spin, written out (selfplay's default is passive),
                    env.setdefault("GOMP_SPINCOUNT", "300000")  # or the spin count exported by the caller
                else:
                    env["OMP_WAIT_POLICY"] = wait.upper()
                load = os.getloadavg()[0]
                subprocess.run([sys.executable, "-m", "bench.threads", *passed, "--child", model, mode, str(out)],
                               env=env, check=True)
                rec = json.loads(out.read_text())
                print(f"{mode:11s} wait={wait:8s} outer {rec['outer_s']:7.2f}s inner {rec['inner_s'] or 0:7.2f}s "
                      f"steps {rec['steps']} ctx {rec['ctx']:6d} ray_cpu {rec['ray_cpu_s']:5.2f}s "
                      f"idle_cpu {rec['idle_cpu_s']:.3f}s/{args.idle_s:g}s load {load:.1f}->{rec['load']:.1f} "
                      f"{rec['ray_top'] if rec['ray_top'] else ''}"
                      + (f" idle_engine_cpu {rec['idle_engine_cpu_s']:.3f}s" if "idle_engine_cpu_s" in rec else ""),
                      flush=True)


if __name__ == "__main__":
    main()
