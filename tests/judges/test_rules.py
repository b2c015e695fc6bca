"""Rule judges on real tasks and tables: the arithmetic verifier, SPIN's sft judge, judge_table, errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from selfplay.config.schema import PairingConfig, SFTJudgeConfig, VerifierJudgeConfig
from selfplay.judges import (
    JudgeError,
    PromptGroup,
    SFTJudge,
    VerifierJudge,
    build_judge,
    decode_prompt,
    judge_table,
    run_judge,
)
from selfplay.pairs import build_pairs
from selfplay.tasks import ArithmeticTask


def generations(rows: list[tuple[str, str | list, str | None, list[str]]]) -> pa.Table:
    """(prompt_id, prompt, reference, responses) -> a generations table (samples listed in reverse order,
    so grouping must sort by sample_index)."""
    out = []
    for pid, prompt, ref, responses in rows:
        text = prompt if isinstance(prompt, str) else json.dumps(prompt)
        for k in reversed(range(len(responses))):
            out.append({"prompt_id": pid, "prompt": text, "reference": ref, "sample_index": k,
                        "response": responses[k], "response_token_ids": [7] * len(responses[k]),
                        "finish_reason": "stop", "policy_version": 0, "iteration": 0})
    return pa.Table.from_pylist(out)


def test_verifier_scores_arithmetic_exact_and_graded():
    task = ArithmeticTask(level=2)
    ex = task.train_examples(2, seed=0)
    ref0, ref1 = ex[0].reference, ex[1].reference
    wrong = str(int(ref0) + 1)
    table = generations([(ex[0].id, ex[0].prompt, ref0, [ref0, wrong, f"{ref0} because", "no idea"]),
                         (ex[1].id, ex[1].prompt, ref1, [f" {ref1}\n"])])
    judged, stats = judge_table(table, build_judge(VerifierJudgeConfig(type="verifier"), task))
    by_key = {(r["prompt_id"], r["sample_index"]): r["score"] for r in judged.to_pylist()}
    assert [by_key[(ex[0].id, k)] for k in range(4)] == [1.0, 0.0, 1.0, 0.0]
    assert by_key[(ex[1].id, 0)] == 1.0
    assert judged.column("judge").to_pylist() == ["verifier"] * 5
    assert judged.column_names[:-2] == table.column_names
    assert stats["samples"] == 5 and stats["unscored"] == 0 and stats["mean_score"] == pytest.approx(0.6)
    graded = VerifierJudge(ArithmeticTask(level=2, partial_credit=True))
    group = PromptGroup("hand", "12+35=", ["47", "48", "13"], "47")
    assert run_judge(graded, [group]) == [[1.0, 0.5, 0.0]]  # one of two digits right in "48"


def test_verifier_needs_a_task_with_a_verifier():
    class NoVerifier:
        has_verifier = False

    with pytest.raises(ValueError, match="needs a task with a verifier; NoVerifier"):
        VerifierJudge(NoVerifier())


def test_sft_judge_and_spin_pairs():
    table = generations([
        ("a", "Q1", "the  answer", ["the answer", " the answer\n", "wrong", "other"]),
        ("b", "Q2", "42", ["42", "42 "]),
    ])
    judged, _ = judge_table(table, build_judge(SFTJudgeConfig(type="sft")))
    scores = {(r["prompt_id"], r["sample_index"]): r["score"] for r in judged.to_pylist()}
    assert [scores[("a", k)] for k in range(4)] == [1.0, 1.0, 0.0, 0.0]
    pairs, stats = build_pairs(judged, PairingConfig(), "reference")
    assert [(r["chosen"], r["rejected"]) for r in pairs.to_pylist()] == [("the  answer", "wrong"),
                                                                         ("the  answer", "other")]
    assert stats["no_pair_all_correct"] == 1  # every sample of "b" equals its reference


def test_sft_judge_without_reference_names_the_prompt():
    groups = [PromptGroup("ok", "Q", ["x"], "x"), PromptGroup("noref-7", "Q", ["x"], None)]
    with pytest.raises(JudgeError, match="judge 'sft' failed on prompt 'noref-7'"):
        run_judge(SFTJudge(), groups)


class Flaky:
    name = "flaky"

    def __init__(self, result=None):
        self.result = result

    def score(self, groups):
        if self.result is not None:
            return self.result
        if any(g.prompt_id.startswith("bad-") for g in groups):
            raise ZeroDivisionError("boom")
        return [[0.0] * len(g.responses) for g in groups]


def test_raising_judge_names_the_failing_prompt_in_a_batch():
    groups = [PromptGroup(f"p{k}", "Q", ["r"]) for k in range(3)] + [PromptGroup("bad-3", "Q", ["r"])]
    message = r"judge 'flaky' failed on prompt 'bad-3': ZeroDivisionError: boom"
    with pytest.raises(JudgeError, match=message) as e:
        run_judge(Flaky(), groups)
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    many = [PromptGroup(f"bad-{k}", "Q", ["r"]) for k in range(5)]
    with pytest.raises(JudgeError, match="prompts 'bad-0', 'bad-1', 'bad-2' and maybe more: Zero"):
        run_judge(Flaky(), [*groups[:3], *many])

    class BatchOnly(Flaky):
        def score(self, groups):
            if len(groups) > 1:
                raise MemoryError("batch too big")
            return [[0.0]]

    with pytest.raises(JudgeError, match="a batch of 4 prompts .each prompt alone scores fine.: MemoryError"):
        run_judge(BatchOnly(), groups)


@pytest.mark.parametrize("result, message", [
    ([[0.5]], "expected 2 lists, got 1"),
    ([[0.5], [0.1]], "prompt 'q2': expected 2 scores, got 1"),
    ([[0.5], [0.1, float("nan")]], "prompt 'q2': score 1 is nan"),
    ([[0.5], [0.1, "high"]], "prompt 'q2': score 1 is 'high'"),
    ([[0.5], [0.1, True]], "prompt 'q2': score 1 is True"),
    ([[0.5], 0.7], "prompt 'q2': expected 2 scores, got float"),
    (7, "expected 2 lists, got int"),
])
def test_malformed_scores_are_rejected(result, message):
    groups = [PromptGroup("q1", "Q", ["r"]), PromptGroup("q2", "Q", ["r", "s"])]
    with pytest.raises(JudgeError, match=message):
        run_judge(Flaky(result), groups)
    assert run_judge(Flaky([[1], [None, 0.25]]), groups) == [[1.0], [None, 0.25]]
    import numpy as np

    assert run_judge(Flaky([np.array([1.0]), (None, np.float32(0.25))]), groups) == [[1.0], [None, 0.25]]


def test_chat_prompts_are_decoded():
    messages = [{"role": "user", "content": "2+2="}]
    assert decode_prompt(json.dumps(messages)) == messages
    assert decode_prompt("[1, 2] sorted?") == "[1, 2] sorted?"
    assert decode_prompt("[3, 1]") == "[3, 1]"  # JSON, but not chat messages
