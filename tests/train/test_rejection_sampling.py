"""Rejection-sampling fine-tuning (RAFT / ReST / STaR): `pairing.strategy: best` + `train.loss.type: sft`.

The pairing picks each prompt's best verified sample alone; the learner's round on those rows is its SFT
round on the chosen responses (real DeepSpeed learner, in-process, nano Llama).
"""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from selfplay.config import ConfigError, load_config
from selfplay.config.schema import PairingConfig, TrainConfig
from selfplay.pairs import build_pairs
from selfplay.tasks.arithmetic import ArithmeticTask
from selfplay.train.family import SFT, family_for

BASE = dict(learning_rate=3e-3, micro_batch_size=16, warmup_ratio=0.0, lr_schedule="constant", epochs=4)


def hand_judgments(groups: dict[str, list[tuple[str, float | None]]]) -> pa.Table:
    rows = [{"prompt_id": pid, "prompt": f"Q-{pid}", "reference": "R", "sample_index": k, "response": text,
             "response_token_ids": [10 + k, 2], "policy_version": 3, "iteration": 3, "score": score,
             "judge": "verifier"}
            for pid, samples in groups.items() for k, (text, score) in enumerate(samples)]
    return pa.Table.from_pylist(rows)


def test_best_keeps_the_first_verified_sample_per_prompt():
    groups = {
        "a": [("7", 0.0), ("8", 1.0), ("9", 1.0), ("6", 0.0)],  # two correct: the lower index wins
        "b": [("1", 0.0), ("2", 0.0)],  # all wrong: nothing to imitate
        "c": [("55", 0.5), ("15", 0.25)],  # partial credit below min_score
        "d": [("x", None), ("4", 1.0)],  # an unscored sample is left out
    }
    pairs, stats = build_pairs(hand_judgments(groups), PairingConfig(), "best")
    rows = pairs.to_pylist()
    assert [(r["pair_id"], r["chosen"], r["chosen_token_ids"]) for r in rows] == [("3:a:1:", "8", [11, 2]),
                                                                                 ("3:d:1:", "4", [11, 2])]
    assert all(r["rejected"] is None and r["rejected_token_ids"] is None and r["margin"] is None for r in rows)
    assert [r["chosen_score"] for r in rows] == [1.0, 1.0]
    assert (stats["pairs"], stats["prompts_with_pairs"], stats["no_pair_all_wrong"],
            stats["no_pair_below_min_score"], stats["unscored_samples"], stats["mean_margin"]) == (2, 2, 1, 1, 1, None)

    # RAFT under a reward model: no threshold, every prompt's top sample is kept
    loose, _ = build_pairs(hand_judgments(groups), PairingConfig(min_score=None), "best")
    assert [r["chosen"] for r in loose.to_pylist()] == ["8", "1", "55", "4"]


def test_recipe_settings_select_it_and_bad_combinations_are_named(tmp_path):
    base = ["policy.preset=nano", "task.type=arithmetic", "judge.type=verifier"]
    cfg = load_config({}, [*base, "pairing.strategy=best", "train.loss.type=sft"])
    assert cfg.pairing_strategy == "best" and family_for(cfg.train.loss) is SFT and cfg.pairing.min_score == 1.0
    with pytest.raises(ConfigError, match=r"pairing\.strategy: `best` makes SFT targets .* needs train\.loss\.type"):
        load_config({}, [*base, "pairing.strategy=best"])
    with pytest.raises(ConfigError, match=r"train\.loss\.params: .* not accepted by loss 'sft'"):
        load_config({}, [*base, "train.loss.type=sft", "train.loss.params={beta2: 1}"])


@pytest.fixture(scope="module")
def learner(tiny_model_dir, tmp_path_factory):
    from selfplay.train import Learner

    lrn = Learner(tiny_model_dir, TrainConfig(**BASE), output_dir=tmp_path_factory.mktemp("rft"), threads=1)
    yield lrn
    lrn.shutdown()


def sampled_judgments(tokenizer, n_prompts: int = 20, n: int = 4, seed: int = 0) -> pa.Table:
    """Arithmetic prompts with n "sampled" answers each (token ids ending in eos, as vLLM returns them),
    scored by the task's verifier; some prompts have one or two right answers, some none."""
    task, rng = ArithmeticTask(level=1), random.Random(seed)
    rows = []
    for i, ex in enumerate(task.train_examples(n_prompts, seed=seed)):
        right = int(ex.reference)
        answers = [str(right + rng.choice([-11, -2, 1, 3, 10])) for _ in range(n)]
        for j in range(i % 3):  # 0, 1 or 2 correct samples
            answers[j + 1] = str(right)
        for k, text in enumerate(answers):
            ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
            rows.append({"prompt_id": ex.id, "prompt": ex.prompt, "reference": ex.reference, "sample_index": k,
                         "response": text, "response_token_ids": ids, "policy_version": 0, "iteration": 0,
                         "score": task.score(ex, text), "judge": "verifier"})
    return pa.Table.from_pylist(rows)


def test_rft_round_is_sft_on_the_verified_samples(learner, tiny_model_dir):
    learner.reload(tiny_model_dir, TrainConfig(**BASE))
    judged = sampled_judgments(learner.tokenizer)
    rows, stats = build_pairs(judged, PairingConfig(), "best")
    assert rows.num_rows == stats["prompts_with_pairs"] == 13 and stats["no_pair_all_wrong"] == 7
    assert set(rows.column("chosen_score").to_pylist()) == {1.0}

    # Probe: each kept (correct) sample beside a wrong one of the same prompt, to score their log-probs.
    wrong = {r["prompt_id"]: r for r in judged.to_pylist() if r["score"] == 0.0}
    probe = pa.Table.from_pylist([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": wrong[r["prompt_id"]]
                                   ["response"], "chosen_token_ids": r["chosen_token_ids"],
                                   "rejected_token_ids": wrong[r["prompt_id"]]["response_token_ids"]}
                                  for r in rows.to_pylist()])
    before = learner.compute_reference(probe)

    rft = TrainConfig(**BASE, loss={"type": "sft"})
    summary = learner.train_round(rows, rft)
    assert summary["kind"] == "sft" and summary["kept"] == 13 and summary["steps"] == BASE["epochs"]
    # One step per epoch here, so the first loss is the start model's mean NLL per token of exactly the
    # kept samples' sampled token ids (eos included): the rows are the SFT targets, nothing else is.
    n_tokens = sum(len(ids) for ids in rows.column("chosen_token_ids").to_pylist())
    expected = -sum(before.column("ref_chosen_logps").to_pylist()) / n_tokens
    assert summary["loss_first"] == pytest.approx(expected, rel=1e-4)
    assert summary["loss_last"] < 0.8 * summary["loss_first"]
    after = learner.compute_reference(probe)
    gain = [a - b for a, b in zip(after.column("ref_chosen_logps").to_pylist(),
                                  before.column("ref_chosen_logps").to_pylist())]
    assert min(gain) > 0  # every verified sample became more likely
