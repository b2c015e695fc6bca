"""The LLM-as-a-judge on a real vLLM generator pool (two replicas in Ray), and a replica that dies while
it judges.

The judge model is the nano policy trained here (HF, in-process, a few dozen Adam steps) to answer every
judge prompt with ``Verdict: B``, then loaded into the pool's replicas through the verified weight path
(``GeneratorPool.load_dir``), which is also where a restarted replica gets it back. Asked in one order
only, (0,1), (0,2), (1,2), ..., such a judge always prefers the later sample, so sample ``k`` of a prompt
with ``n`` samples wins ``k`` of its ``n - 1`` comparisons: the expected scores are known without the
library, they differ per sample and per group size, and any comparison lost, repeated or unparsed would
change them. The judge reaches the pool through the adapter the run uses (``_CompletionsOnly``).

The fault is real: one replica's process exits (``os._exit``, as in a crash) inside its first judge
shard; Ray restarts it, the pool restores the judge weights into it and only that shard is asked again.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from judge_helpers import train_to_answer_b

from selfplay.config.schema import LLMJudgeConfig
from selfplay.judges import DEFAULT_TEMPLATE, build_judge, judge_table
from selfplay.judges.llm_judge import fill_template

ray = pytest.importorskip("ray", reason="needs Ray (absent on the GPU machines: docs/gpu.md)")

pytestmark = pytest.mark.slow

# prompt id -> its samples (group sizes 2-4, so shards of judge prompts cut across groups)
SAMPLES = {
    "q0": ["12", "75", "13"], "q1": ["9", "90"], "q2": ["47", "4", "74", "11"], "q3": ["6", "60", "16"],
    "q4": ["100", "10"], "q5": ["3", "33", "8", "83"], "q6": ["58", "5", "85"], "q7": ["20", "2", "22"],
}
PROMPTS = {pid: f"What is {7 + i} + {5 * i}? Answer with the number only." for i, pid in enumerate(SAMPLES)}
COMPARISONS = sum(len(s) * (len(s) - 1) // 2 for s in SAMPLES.values())  # one order: 26


def generations() -> pa.Table:
    rows = [{"prompt_id": pid, "prompt": PROMPTS[pid], "reference": None, "sample_index": k, "response": text,
             "iteration": 0} for pid, texts in SAMPLES.items() for k, text in enumerate(texts)]
    return pa.Table.from_pylist(rows)


def expected_scores() -> list[float]:
    return [k / (len(texts) - 1) for texts in SAMPLES.values() for k in range(len(texts))]


@pytest.fixture(scope="module")
def judge_dir(tiny_model_dir, tmp_path_factory):
    """The nano policy trained to answer judge prompts with ``Verdict: B`` (saved as an HF directory)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("judge") / "nano-judge"
    shutil.copytree(tiny_model_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    train = [fill_template(DEFAULT_TEMPLATE, f"What is {i} + {2 * i}?", str(3 * i), str(i)) for i in range(8)]
    train_to_answer_b(model, tok, train, steps=48)
    model.save_pretrained(out, safe_serialization=True)
    return out


def test_llm_judge_on_a_vllm_pool_survives_a_replica_killed_mid_judging(vllm_pool, judge_dir):
    from selfplay.loop.factory import _CompletionsOnly

    pool = vllm_pool
    pool.load_dir(judge_dir, version=1)  # the judge's weights in both replicas, and where a restart finds them
    cfg = LLMJudgeConfig(type="llm_judge", path=str(judge_dir), max_tokens=16, both_orders=False)
    table = generations()

    fault_free, stats = judge_table(table, build_judge(cfg, engine=_CompletionsOnly(pool)))
    assert fault_free.column("score").to_pylist() == pytest.approx(expected_scores())
    assert (stats["verdicts"], stats["unparseable"], stats["unscored"]) == (COMPARISONS, 0, 0)
    shards = pool.last_run["shards"]
    assert shards == -(-COMPARISONS // pool.gen_cfg.shard_size) and pool.last_run["attempts"] == {}

    before = pool.info()[1]
    ray.get(pool.actors[1].inject_fault.remote("generate", "exit", 0.5), timeout=60)
    judge = build_judge(cfg, engine=_CompletionsOnly(pool))
    judged, stats = judge_table(table, judge)

    # every prompt judged exactly once: one row per sample, the fault-free scores, one verdict per comparison
    assert judged.column("prompt_id").to_pylist() == table.column("prompt_id").to_pylist()
    assert judged.column("sample_index").to_pylist() == table.column("sample_index").to_pylist()
    assert judged.column("score").to_pylist() == fault_free.column("score").to_pylist()
    assert (stats["verdicts"], stats["unparseable"], stats["unscored"]) == (COMPARISONS, 0, 0)
    # only the unfinished prompts were asked again: the shard in flight on the killed replica
    run = pool.last_run
    assert run["restored"] == ["generator-1"]
    assert run["attempts"] == {1: 2}  # shard 1: generator-1's first, in flight when it died
    assert sorted(i for done in run["by_replica"].values() for i in done) == list(range(shards))
    after = pool.info()[1]
    assert after["worker_id"] != before["worker_id"] and after["restarted"] is True  # a new process
    assert (after["version"], after["checksum"]) == (1, before["checksum"])  # the judge's weights again
