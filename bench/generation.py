"""Generation benchmark: the generator actor vs HF ``generate`` and vs a raw in-process vLLM ``LLM``.

    python -m bench.generation [--preset tiny] [--prompts 64] [--n 4] [--max-tokens 64]

Same model (a preset built offline, fp32), same chat prompts, same sampling (temperature 1, ``n``
samples, ``max_tokens`` new tokens), one thread per engine. Throughput is generated tokens per second,
median of ``--repeats`` timed runs after one warm-up; raw vLLM and the actor run alternately.

* HF: the project's ``hf`` engine (transformers ``generate``, left-padded batches of 16, unseeded so it
  can batch; seeded runs go prompt by prompt and are slower).
* raw vLLM: ``vllm.LLM.generate`` in this process on the same token ids with the same per-prompt seeds
  (tokenization is done before the timer: the actor's own tokenization counts as its overhead).
* actor: ``GeneratorPool`` with one ``GeneratorActor`` (a Ray call, chat rendering, tokenization,
  conversion to ``Completion`` records and their return to the driver included).

Printed last: actor/HF speed-up and the actor's overhead over raw vLLM (goal: under 10%).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

CACHE = Path(os.environ.get("SELFPLAY_BENCH_CACHE", ".cache/bench"))


def timed(fn, repeats: int) -> tuple[float, int]:
    """(median seconds, generated tokens) of ``fn() -> tokens`` after one warm-up call."""
    fn()
    times, tokens = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), tokens


def timed_pairs(a, b, repeats: int) -> tuple[tuple[float, int], tuple[float, int]]:
    """Like :func:`timed` for two functions, run alternately."""
    a(), b()
    ta, tb, na, nb = [], [], 0, 0
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            n = fn()
            times.append(time.perf_counter() - start)
            na, nb = (n, nb) if fn is a else (na, n)
    return (statistics.median(ta), na), (statistics.median(tb), nb)


def count(groups) -> int:
    return sum(len(c.token_ids) for g in groups for c in g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from selfplay.env import setup_env

    setup_env(threads=1)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from selfplay.config.schema import GenerationConfig, ResourcesConfig
    from selfplay.generate import Sampling, encode_prompts, make_engine
    from selfplay.models import build_policy, count_parameters

    path = build_policy(CACHE / args.preset, preset=args.preset, tokenizer="char", seed=0)
    prompts = [[{"role": "user", "content": f"{i * 37 % 1000}+{i * 91 % 1000}="}] for i in range(args.prompts)]
    sampling = Sampling(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    print(f"{args.preset}: {count_parameters(path) / 1e6:.1f}M params, {args.prompts} prompts x n={args.n} x "
          f"<= {args.max_tokens} tokens, fp32, 1 thread per engine", flush=True)
    results = {}

    hf = make_engine("hf", path, dtype="float32", batch_size=16)
    results["HF generate"] = timed(lambda: count(hf.generate(prompts, sampling.with_(seed=None))), args.repeats)
    report("HF generate", *results["HF generate"])
    tokenizer = hf.tokenizer

    from vllm import LLM, SamplingParams

    llm = LLM(model=str(path), dtype="float32", enforce_eager=True, max_model_len=256, seed=0)
    ids = [{"prompt_token_ids": x} for x in encode_prompts(tokenizer, prompts)]
    params = [SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=sampling.prompt_seed(i))
              for i in range(len(ids))]

    def raw() -> int:
        return sum(len(c.token_ids) for o in llm.generate(ids, params, use_tqdm=False) for c in o.outputs)

    import ray

    from actors.generator import GeneratorPool

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = GenerationConfig(replicas=1, max_model_len=256, shard_size=args.prompts)
    pool = GeneratorPool(path, cfg, ResourcesConfig(), dtype="float32", start_timeout_s=900)
    try:
        # Interleaved (raw, actor, raw, actor, ...): other load on the machine hits both alike.
        pair = timed_pairs(raw, lambda: count(pool.generate(prompts, sampling)[0]), args.repeats)
    finally:
        pool.shutdown()
        ray.shutdown()
    results["raw vLLM"], results["generator actor"] = pair
    report("raw vLLM", *results["raw vLLM"])
    report("generator actor", *results["generator actor"])

    rate = {k: tok / s for k, (s, tok) in results.items()}
    print(f"\nactor vs HF generate: {rate['generator actor'] / rate['HF generate']:.1f}x tokens/s")
    print(f"actor vs raw vLLM: {rate['generator actor'] / rate['raw vLLM']:.3f}x tokens/s "
          f"(overhead {(results['generator actor'][0] / results['raw vLLM'][0] - 1) * 100:+.1f}% time; goal < 10%)")


def report(name: str, seconds: float, tokens: int) -> None:
    print(f"  {name:<16} {seconds:7.3f} s  {tokens:6d} tokens  {tokens / seconds:9.0f} tok/s", flush=True)


if __name__ == "__main__":
    main()
