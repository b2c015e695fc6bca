"""Model judges on tiny real models: the reward-model judge in-process and in a Ray actor, Bradley-Terry
training to a separable toy preference, and the pairwise judge's win rates."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from selfplay.config.schema import PairwiseJudgeConfig, RewardModelJudgeConfig
from selfplay.judges import PromptGroup, build_judge, judge_table
from selfplay.judges.pairwise import render_triple, sigmoid
from selfplay.judges.reward_model import RewardModelJudge, render_response
from selfplay.judges.train_rm import METRICS_FILE, train_reward_model

GROUPS = [
    PromptGroup("g1", "12+35=", ["47", "48", "1234", ""]),
    PromptGroup("g2", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                ["hello", "x" * 40]),
    PromptGroup("g3", "3+4=", ["7"]),
]


def flat(scores: list[list[float | None]]) -> list[float | None]:
    return [s for row in scores for s in row]


@pytest.fixture(scope="module")
def tiny_rm(tiny_model_dir, tmp_path_factory):
    """A reward model whose head was trained (one short Bradley-Terry epoch): judges refuse a random one."""
    out = tmp_path_factory.mktemp("rm") / "rm"
    train_reward_model(toy_pairs(32, seed=5), tiny_model_dir, out, epochs=1, lr=1e-3, batch_size=16, seed=0)
    return out


def test_build_reward_model_and_render(tiny_rm):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_rm)
    assert config.architectures == ["LlamaForSequenceClassification"]
    assert config.num_labels == 1 and config.pad_token_id == 0
    judge = RewardModelJudge(tiny_rm, batch_size=3)
    tok = judge.scorer.tokenizer
    assert render_response(tok, "12+35=", "47") == "<s><u>12+35=<a>47</s>"
    assert render_response(tok, GROUPS[1].prompt, "yo") == "<s><sys>be brief<u>hi<a>yo</s>"
    scores = judge.score(GROUPS)
    assert [len(s) for s in scores] == [4, 2, 1]
    assert len({round(s, 6) for s in scores[0]}) == 4  # distinct responses, distinct rewards
    # batching and padding do not change a response's reward
    alone = RewardModelJudge(tiny_rm, batch_size=1).score(GROUPS)
    assert flat(alone) == pytest.approx(flat(scores), abs=1e-5)


def test_reward_model_actor_matches_in_process(tiny_rm, ray_local):
    cfg = RewardModelJudgeConfig(type="reward_model", path=str(tiny_rm), batch_size=3)
    local = build_judge(cfg)
    from actors.judge import spawn_judge

    remote = spawn_judge(cfg)
    try:
        assert remote.name == local.name == "reward_model:rm"
        expected = local.score(GROUPS)
        assert flat(remote.score(GROUPS)) == pytest.approx(flat(expected), abs=1e-6)
        gens = pa.Table.from_pylist([{"prompt_id": "g1", "prompt": "12+35=", "reference": "47",
                                      "sample_index": k, "response": r} for k, r in enumerate(["47", "48"])])
        judged, stats = judge_table(gens, remote)
        assert judged.column("score").to_pylist() == pytest.approx(expected[0][:2], abs=1e-6)
        assert stats["unscored"] == 0
    finally:
        remote.close()


def toy_pairs(n: int, seed: int) -> pa.Table:
    """Separable preference: "yes..." is always better than "no...", whatever the prompt."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(1, 4)
        rows.append({"prompt": f"{rng.randint(0, 99)}+{rng.randint(0, 99)}=", "chosen": "yes" * k,
                     "rejected": "no" * rng.randint(1, 4)})
    return pa.Table.from_pylist(rows)


def test_train_reward_model_learns_separable_pairs(tiny_model_dir, tmp_path):
    path = tmp_path / "pairs.parquet"
    import pyarrow.parquet as pq

    pq.write_table(toy_pairs(64, seed=0), path)
    metrics = train_reward_model(path, tiny_model_dir, tmp_path / "trained", epochs=3, lr=1e-3,
                                 batch_size=16, seed=0)
    assert metrics["steps"] == 12 and metrics["epoch_loss"][-1] < metrics["epoch_loss"][0]
    assert metrics["train_accuracy"] > 0.9
    assert (tmp_path / "trained" / METRICS_FILE).is_file()
    # the saved directory is a working reward-model judge, accurate on held-out pairs
    judge = RewardModelJudge(tmp_path / "trained")
    held_out = toy_pairs(32, seed=1).to_pylist()
    groups = [PromptGroup(str(k), r["prompt"], [r["chosen"], r["rejected"]]) for k, r in enumerate(held_out)]
    accuracy = sum(c > r for c, r in judge.score(groups)) / len(groups)
    assert accuracy > 0.9


def test_render_triple_is_pinned():
    """The pairwise model's input format, written out (a trained pairwise model depends on it)."""
    assert render_triple("12+35=", "47", "") == "12+35=\n\n[Response A]\n47\n\n[Response B]\n"
    assert render_triple(GROUPS[1].prompt, "hello", "yo") == (
        "system: be brief\nuser: hi\n\n[Response A]\nhello\n\n[Response B]\nyo")


def test_pairwise_judge_win_rates(tiny_rm):
    judge = build_judge(PairwiseJudgeConfig(type="pairwise", path=str(tiny_rm), batch_size=4))
    scores = judge.score(GROUPS)
    assert scores[2] == [None]  # a lone sample has nothing to beat
    for group, rates in zip(GROUPS[:2], scores[:2], strict=True):
        n = len(group.responses)
        # sigmoid(logit) of every rendered ordered triple, by hand: P(i beats j) = (p(i, j) + 1 - p(j, i)) / 2,
        # a sample's win rate the mean over its n - 1 opponents
        texts = {(i, j): render_triple(group.prompt, group.responses[i], group.responses[j])
                 for i in range(n) for j in range(n) if i != j}
        p = {ij: sigmoid(judge.scorer.logits([t], add_special_tokens=True)[0]) for ij, t in texts.items()}
        want = [sum((p[i, j] + 1 - p[j, i]) / 2 for j in range(n) if j != i) / (n - 1) for i in range(n)]
        assert len(rates) == n and rates == pytest.approx(want, abs=1e-5)
        assert sum(rates) / n == pytest.approx(0.5)  # symmetrised win rates always average 0.5
