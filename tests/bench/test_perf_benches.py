"""The sync, iteration and learner benchmarks without timing anything: their arguments, the recipe
they run, how they pick and compute their printed figures, and the peer pipeline's scoring script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import iteration, learner, sync
from selfplay.config import load_config
from selfplay.loop.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- sync
def test_sync_defaults_are_the_headline_rows_and_bad_counts_are_refused():
    args = sync.parse_args([])
    assert args.presets == ["medium", "large"] and args.zero == [0, 3] and args.gens == [1, 2]
    with pytest.raises(SystemExit):
        sync.parse_args(["--gens", "0"])
    with pytest.raises(SystemExit):
        sync.parse_args(["--presets", "huge"])


def test_sync_worst_ratio_reads_only_medium_and_large_object_store_rows():
    rows = [dict(preset="small", method="object_store", ratio=40.0),
            dict(preset="medium", method="object_store", ratio=7.5),
            dict(preset="large", method="object_store", ratio=9.25),
            dict(preset="large", method="filesystem", ratio=30.0)]
    assert sync.worst_ratio(rows) == 9.25
    assert sync.worst_ratio(rows[:1]) is None


def test_sync_summary_takes_medians_of_every_part():
    from selfplay.sync.base import SyncReport

    reports = [SyncReport("object_store", v, 3, 1000, "c", export_s=e, transfer_s=t, verify_s=p)
               for v, (e, t, p) in enumerate([(1.0, 0.5, 0.2), (3.0, 0.7, 0.4), (2.0, 0.6, 0.3)])]
    row = sync.summarize_reports("medium", 10, 3, 2, reports, [(0.1, 0.2), (0.3, 0.4), (0.2, 0.3)])
    assert (row["export_s"], row["transfer_s"], row["probe_s"]) == (2.0, 0.6, 0.3)
    assert (row["checksum_s"], row["load_s"]) == (0.2, 0.3)
    assert row["full_s"] == pytest.approx(2.9)  # the median update, export + transfer + probe
    assert row["bytes"] == 1000 and row["zero"] == 3 and row["gens"] == 2


def test_sync_savings_count_the_gather_copy_only_where_parameters_are_whole():
    ideas = dict(put_bytes_s=0.5, put_arrays_s=0.1, get_bytes_s=0.2, get_arrays_s=0.0, sha256_s=0.3,
                 blake3_1t_s=0.1, gather_copy_s=0.05, pack_s=0.3, put_split_s=0.15)
    z0, z3 = sync.savings(ideas, 0), sync.savings(ideas, 3)
    assert z0["array_return"] == pytest.approx(0.4) and z0["array_read"] == pytest.approx(0.2)
    assert z0["blake3"] == pytest.approx(0.4)  # learner and generators each hash once
    assert z0["no_gather_copy"] == 0.05 and "no_gather_copy" not in z3
    # split buckets: pack (0.3) + put of the joined arrays (0.1) against checksum + put of the parts (0.15)
    assert z0["split_return"] == pytest.approx(0.25) and "split_return" not in z3


# -------------------------------------------------------------------------------------- iteration
def test_iteration_recipe_is_a_valid_spin_run_of_the_small_preset():
    args = iteration.parse_args(["--prompts", "24", "--n", "3", "--batch", "4"])
    cfg = load_config(iteration.recipe(args))
    assert cfg.policy.preset == "small" and cfg.iterations == iteration.ITERATIONS
    assert cfg.generation.prompts_per_iteration == 24 and cfg.generation.n == 3
    assert cfg.judge.type == "sft" and cfg.pairing_strategy == "reference"
    assert cfg.train.micro_batch_size == 4 and cfg.evaluation.num_prompts == 0
    assert cfg.generation.shard_size == 16  # shards the learner scores while the generator samples the next
    assert load_config(iteration.recipe(iteration.parse_args(["--shard-size", "64"]))).generation.shard_size == 64
    # one engine at --threads threads on the selfplay side, as the scripts' one vLLM process (not `auto`)
    two = load_config(iteration.recipe(iteration.parse_args(["--threads", "2"])))
    assert (two.generation.replicas, two.resources.threads_per_actor) == (1, 2)
    for bad in (["--prompts", "0"], ["--shard-size", "0"]):
        with pytest.raises(SystemExit):
            iteration.parse_args(bad)


def test_threads_bench_reads_switches_and_cpu_seconds_of_every_thread():
    import os
    import threading

    from bench import threads

    args = threads.parse_args([])
    assert (args.threads, args.modes, args.wait) == (2, list(threads.MODES), ["unset"])
    pid = os.getpid()
    spin = threading.Thread(target=lambda: sum(i * i for i in range(2_000_000)))  # CPU in a second thread
    c0 = threads.cpu_seconds(pid)
    spin.start()
    spin.join()
    assert threads.cpu_seconds(pid) > c0 and threads.ctx_switches(pid) >= 0
    assert threads.ray_processes("/no/such/ray/temp/dir", exclude=set()) == {}


def test_iteration_timings_are_read_from_the_manifest(tmp_path):
    """The walls and stage seconds the benchmark compares come from the run's manifest, not its log."""
    rd = RunDir(tmp_path)
    rd.create({"iterations": 2}, "iterations: 2\n", {})
    for k, stages in enumerate(({"generate": 1.0, "train": 2.5}, {"generate": 1.0, "sync": 1.25})):
        for name, seconds in stages.items():
            rd.mark_stage(k, name, seconds, {})
        rd.mark_complete(k, policy_version=k + 1, wall_seconds=sum(stages.values()) + 0.5)
    timings = iteration.iteration_timings(RunDir(tmp_path).manifest)
    assert timings == {"walls": {0: 4.0, 1: 2.75},
                       "stages": {0: {"generate": 1.0, "train": 2.5}, 1: {"generate": 1.0, "sync": 1.25}}}


def test_iteration_prompts_are_read_once_per_prompt_from_the_run_layout(tmp_path):
    it = RunDir.iter_dir(iteration._RunRoot(tmp_path), 1)
    it.mkdir(parents=True)
    rows = [dict(prompt_id=f"p{i // 2}", prompt=f"sort: {i // 2},1", reference="1", sample_index=i % 2)
            for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), it / "generations.parquet")
    out = tmp_path / "prompts.jsonl"
    assert iteration.prompts_of(tmp_path, 1, out) == 3
    assert [json.loads(x)["prompt_id"] for x in out.read_text().splitlines()] == ["p0", "p1", "p2"]


def test_iteration_ratio_is_script_wall_over_selfplay_wall_of_the_fastest_runs():
    assert iteration.ratio([{"wall_s": 10.0}, {"wall_s": 8.0}], [{"wall_s": 30.0}, {"wall_s": 40.0}]) == 3.75


def test_pipeline_scoring_script_pairs_the_reference_against_each_wrong_distinct_sample(tmp_path):
    samples = [dict(prompt_id="a", prompt="sort: 3,1", reference="1,3", sample_index=0, response="1,3"),
               dict(prompt_id="a", prompt="sort: 3,1", reference="1,3", sample_index=1, response="3,1"),
               dict(prompt_id="a", prompt="sort: 3,1", reference="1,3", sample_index=2, response="3,1"),
               dict(prompt_id="b", prompt="sort: 2,5", reference="2,5", sample_index=0, response="2, 5\nx"),
               dict(prompt_id="b", prompt="sort: 2,5", reference="2,5", sample_index=1, response="")]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    subprocess.run([sys.executable, str(ROOT / "bench" / "pipeline" / "score.py"), "--samples",
                    str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "p.jsonl"), "--timings",
                    str(tmp_path / "t.json")], check=True)
    pairs = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert pairs == [{"prompt": "sort: 3,1", "chosen": "1,3", "rejected": "3,1"},
                     {"prompt": "sort: 2,5", "chosen": "2,5", "rejected": ""}]
    assert json.loads((tmp_path / "t.json").read_text())["pairs"] == 2


# ---------------------------------------------------------------------------------------- learner
def test_learner_long_pairs_have_exactly_the_asked_completion_length():
    pairs = learner.make_pairs(5, seed=1, completion_chars=256)
    assert all(len(p["chosen"]) == len(p["rejected"]) == 256 for p in pairs)
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert learner.make_pairs(5, seed=1, completion_chars=256) == pairs


def test_learner_mfu_is_six_n_t_per_second_over_the_peak():
    assert learner.mfu({"tokens": 1000, "train_s": 2.0}, params=10**6, peak=6e9) == pytest.approx(0.5)


def test_bare_dpo_loop_starts_at_log2_and_moves_the_loss(tmp_path):
    from selfplay.env import setup_env
    from selfplay.models import build_policy

    setup_env(1)
    path = build_policy(tmp_path / "nano", preset="nano", tokenizer="char", seed=0)
    args = learner.parse_args(["--batch", "4", "--lr", "1e-2"])
    res = learner.run_bare(path, learner.make_pairs(10, seed=0), args)
    assert res["steps"] == 3  # 10 pairs in batches of 4: a remainder batch of 2
    assert res["loss_first"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at the start
    assert res["loss_last"] != pytest.approx(math.log(2), abs=1e-3)
    assert res["tokens"] > 0


def test_learner_bench_device_and_dtype_flags_keep_the_cpu_default(tmp_path):
    import torch

    args = learner.parse_args([])
    assert (args.device, args.dtype) == ("cpu", "fp32")
    assert learner.peak_label(args) == "torch.mm fp32 2048x2048 on 1 thread(s)"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            learner.parse_args(["--device", "cuda"])
    assert learner.matmul_flops(1, n=256, repeats=2, dtype="bf16") > 0  # the bf16 denominator's CPU path

    from selfplay.env import setup_env
    from selfplay.models import build_policy

    setup_env(1)
    path = build_policy(tmp_path / "nano", preset="nano", tokenizer="char", seed=0)
    res = learner.run_bare(path, learner.make_pairs(6, seed=0), learner.parse_args(["--batch", "4", "--dtype", "bf16"]))
    assert res["steps"] == 2 and math.isfinite(res["loss_last"])
    assert res["loss_first"] == pytest.approx(math.log(2), abs=1e-5)  # bf16 autocast: policy == reference still


def test_sync_cuda_checks_see_a_changed_tensor_and_refuse_cuda_without_a_gpu():
    import torch

    from bench import sync_cuda

    named = [("b", torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)), ("a", torch.ones(4))]
    assert sync_cuda.state_sha(named) == sync_cuda.state_sha(list(reversed(named)))  # name order, not list order
    changed = [("b", named[0][1].clone()), named[1]]
    changed[0][1][1, 2] += 1
    assert sync_cuda.state_sha(changed) != sync_cuda.state_sha(named)
    assert sync_cuda.max_diff([torch.zeros(3)], [torch.tensor([0.0, -0.5, 0.25])]) == 0.5
    args = sync_cuda.parse_args(["--device", "cpu"])
    assert (args.atol, args.precision, args.preset) == (0.0, None, "large")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            sync_cuda.parse_args([])  # --device cuda is the default
