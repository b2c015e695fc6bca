"""No silent random judges: a reward-model or pairwise judge refuses a checkpoint whose score head was
never trained (naming the checkpoint and what is missing), PairRM is refused by name, and pairwise
triples that do not fit ``judge.max_length`` fail or are counted, never truncated."""

from __future__ import annotations

import json
import shutil

import pytest

from selfplay.config.schema import PairwiseJudgeConfig, RewardModelJudgeConfig
from selfplay.judges import PromptGroup, build_judge
from selfplay.judges.pairwise import PairwiseJudge, PairwiseOverflowError, render_triple
from selfplay.judges.reward_model import HEAD_FILE, UntrainedHeadError, build_reward_model
from selfplay.judges.train_rm import train_reward_model
from tests.judges.test_reward_model import toy_pairs


@pytest.fixture(scope="module")
def random_head_rm(tiny_model_dir, tmp_path_factory):
    return build_reward_model(tiny_model_dir, tmp_path_factory.mktemp("rm") / "random", seed=0)


@pytest.fixture(scope="module")
def trained_rm(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "trained"
    train_reward_model(toy_pairs(32, seed=5), tiny_model_dir, out, epochs=1, lr=1e-3, batch_size=16, seed=0)
    return out


@pytest.mark.parametrize("kind", ["reward_model", "pairwise"])
def test_a_causal_lm_is_refused_naming_the_checkpoint(tiny_model_dir, kind):
    config_class = RewardModelJudgeConfig if kind == "reward_model" else PairwiseJudgeConfig
    cfg = config_class(type=kind, path=str(tiny_model_dir))
    with pytest.raises(UntrainedHeadError, match="LlamaForCausalLM.*no trained score head") as err:
        build_judge(cfg)
    assert str(tiny_model_dir) in str(err.value) and "train-rm" in str(err.value)


def test_a_random_head_written_by_build_reward_model_is_refused_until_trained(random_head_rm, tiny_model_dir,
                                                                              tmp_path):
    assert json.loads((random_head_rm / HEAD_FILE).read_text())["score_head"] == "random"
    with pytest.raises(UntrainedHeadError, match="score_head: random"):
        build_judge(RewardModelJudgeConfig(type="reward_model", path=str(random_head_rm)))
    # fitting it (from the random-head directory) makes a judge that loads and scores
    metrics = train_reward_model(toy_pairs(16, seed=1), random_head_rm, tmp_path / "fit", epochs=1, batch_size=16)
    assert json.loads((tmp_path / "fit" / HEAD_FILE).read_text())["score_head"] == "trained"
    scores = build_judge(RewardModelJudgeConfig(type="reward_model", path=str(tmp_path / "fit"))).score(
        [PromptGroup("g", "1+1=", ["2", "3"])])
    assert metrics["steps"] == 1 and len(scores[0]) == 2 and scores[0][0] != scores[0][1]


def test_missing_score_weights_are_named(trained_rm, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "no_head"
    shutil.copytree(trained_rm, broken)
    (broken / HEAD_FILE).unlink()
    weights = next(broken.glob("*.safetensors"))
    tensors = load_file(weights)
    assert "score.weight" in tensors
    save_file({k: v for k, v in tensors.items() if not k.startswith("score.")}, weights, metadata={"format": "pt"})
    with pytest.raises(UntrainedHeadError, match=r"lacks weights \['score.weight'\]"):
        build_judge(RewardModelJudgeConfig(type="reward_model", path=str(broken)))


def test_pairrm_is_refused_by_name(trained_rm, tmp_path):
    pairrm = tmp_path / "pairrm"
    shutil.copytree(trained_rm, pairrm)
    (pairrm / "ranker_config.json").write_text(json.dumps({"ranker_type": "pairranker"}))
    with pytest.raises(UntrainedHeadError, match="PairRM .* is not supported"):
        build_judge(PairwiseJudgeConfig(type="pairwise", path=str(pairrm)))


GROUPS = [PromptGroup("short", "1+1=", ["2", "3", "4"]), PromptGroup("long", "2+2=", ["4", "x" * 300])]


def test_pairwise_triples_over_max_length_fail_with_the_lengths(trained_rm):
    judge = build_judge(PairwiseJudgeConfig(type="pairwise", path=str(trained_rm), max_length=128))
    tok = judge.scorer.tokenizer
    longest = max(len(tok(render_triple(g.prompt, a, b))["input_ids"]) for g in GROUPS
                  for a in g.responses for b in g.responses if a is not b)
    assert longest > 300  # one response alone is longer than max_length: truncating would cut it off
    expected = rf"2 of 8 .*exceed judge.max_length 128 tokens \(longest {longest}\)"
    with pytest.raises(PairwiseOverflowError, match=expected):
        judge.score(GROUPS)


def test_pairwise_overflow_skip_counts_and_leaves_those_comparisons_undecided(trained_rm):
    judge = build_judge(PairwiseJudgeConfig(type="pairwise", path=str(trained_rm), max_length=128, overflow="skip"))
    scores = judge.score(GROUPS)
    assert judge.stats["overlong"] == 2 and judge.stats["comparisons"] == 6
    assert scores[1] == [None, None]  # both orders of the only pair were too long: nothing decided
    fitting = judge.score(GROUPS[:1])[0]
    assert scores[0] == pytest.approx(fitting) and all(s is not None for s in fitting)
    wide = PairwiseJudge(trained_rm, max_length=1024).score(GROUPS)
    assert all(s is not None for row in wide for s in row)


def test_pairwise_include_self_is_sppos_average(trained_rm):
    plain = PairwiseJudge(trained_rm).score(GROUPS[:1])[0]
    sppo = PairwiseJudge(trained_rm, include_self=True).score(GROUPS[:1])[0]
    n = 3
    # SPPO: (1/2 + sum_{j != i} P_ij) / n, where the plain rate is sum_{j != i} P_ij / (n - 1)
    assert sppo == pytest.approx([(0.5 + p * (n - 1)) / n for p in plain], abs=1e-9)
