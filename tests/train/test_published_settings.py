"""Training settings the published recipes need: the optimizer (RMSprop), warm-up in steps, a total
``max_length``, per-iteration learning rate and β, and soft SPPO reading the judge's win probabilities."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from selfplay.config import ConfigError, load_config
from selfplay.config.schema import LossConfig, TrainConfig
from selfplay.train.batches import Micro
from selfplay.train.data import encode, encode_pairs
from selfplay.train.engine import build_optimizer
from selfplay.train.objective import pair_objective
from selfplay.train.rounds import RoundSpec
from selfplay.train.schedule import lr_lambda

BASE = {"policy": {"preset": "nano"}, "task": {"type": "arithmetic"}, "judge": {"type": "verifier"}}


@pytest.fixture(scope="module")
def tok():
    from selfplay.models import build_tokenizer

    return build_tokenizer("char")


@pytest.mark.parametrize(("name", "cls"), [("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop),
                                           ("sgd", torch.optim.SGD)])
def test_optimizer_choice_and_its_first_step(name, cls):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = build_optimizer(model, lr=0.01, weight_decay=0.1, name=name)
    assert type(opt) is cls
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # no decay on 1-D parameters
    weight = model[0].weight
    before = weight.detach().clone()
    weight.grad = torch.full_like(weight, 0.5)
    for p in [*model[0].parameters(), *model[1].parameters()]:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    opt.step()
    if name == "rmsprop":
        # torch RMSprop (alpha 0.99, eps 1e-8), L2 decay added to the gradient: v = 0.01 g², step = lr g/√v
        g = 0.5 + 0.1 * before
        expected = before - 0.01 * g / (torch.sqrt(0.01 * g * g) + 1e-8)
        torch.testing.assert_close(weight.detach(), expected)
    elif name == "sgd":
        torch.testing.assert_close(weight.detach() - before, -0.01 * (0.5 + 0.1 * before))
    else:  # AdamW's first step moves every weight by lr (sign of the gradient), after decoupled decay
        torch.testing.assert_close(weight.detach(), before * (1 - 0.01 * 0.1) - 0.01, atol=1e-6, rtol=0)


def test_optimizer_is_a_checked_recipe_field():
    assert load_config({**BASE, "train": {"optimizer": "rmsprop"}}).train.optimizer == "rmsprop"
    with pytest.raises(ConfigError, match="train.optimizer"):
        load_config({**BASE, "train": {"optimizer": "lion"}})


def test_warmup_in_steps_replaces_the_ratio_the_dpo_authors_way():
    # DPO authors: LambdaLR(min(1, (step + 1) / (warmup_steps + 1))), then constant
    fn = lr_lambda("constant", 1000, 0.5, warmup_steps=150)
    assert [fn(s) for s in (0, 74, 149, 150, 999)] == [1 / 151, 75 / 151, 150 / 151, 1.0, 1.0]
    assert RoundSpec.of(TrainConfig(warmup_steps=150), TrainConfig()).warmup_steps == 150
    assert RoundSpec.of(TrainConfig(), TrainConfig()).warmup_steps is None
    short = lr_lambda("linear", 10, 0.0, warmup_steps=150)  # never longer than the round
    assert short(8) < 1.0 and short(9) == pytest.approx(1.0)


def test_total_max_length_cuts_the_prompt_first_then_the_completions(tok):
    prompt, chosen, rejected = "p" * 30, "c" * 40, "r" * 10
    table = pa.Table.from_pylist([{"prompt": prompt, "chosen": chosen, "rejected": rejected},
                                  {"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    plain = encode(table, tok, ("chosen", "rejected"), max_prompt_length=100, max_completion_length=100)
    p_len = len(plain.prompts[0])
    assert plain.stats["truncated"] == 0 and p_len > 20
    cut = encode(table, tok, ("chosen", "rejected"), max_prompt_length=20, max_completion_length=100, max_length=50)
    assert cut.stats == {"examples": 2, "kept": 2, "dropped": 0, "truncated": 1}
    assert len(cut.prompts[0]) == 20 and cut.prompts[0] == plain.prompts[0][-20:]
    assert len(cut.completions["chosen"][0]) == 30 and len(cut.completions["rejected"][0]) == 11  # 10 + eos
    assert all(len(p) + max(len(c), len(r)) <= 50 for p, c, r in
               zip(cut.prompts, cut.completions["chosen"], cut.completions["rejected"]))
    assert cut.prompts[1] == plain.prompts[1]  # short pairs untouched
    dropped = encode_pairs(table, tok, TrainConfig(max_prompt_length=20, max_completion_length=100, max_length=50,
                                                   truncation="drop"))
    assert dropped.stats["dropped"] == 1 and dropped.rows.tolist() == [1]
    with pytest.raises(ValueError, match="max_length: 20 leaves no room"):
        TrainConfig(max_prompt_length=20, max_length=20)


def test_per_iteration_learning_rate_and_beta_spin_schedule():
    cfg = load_config({**BASE, "iterations": 4, "train": {
        "learning_rate": 5e-7, "loss": {"type": "sigmoid", "beta": 0.1},
        "per_iteration": {2: {"learning_rate": 1e-7}, 3: {"learning_rate": 1e-7, "loss_beta": 5.0}}}})
    rounds = [cfg.train.for_iteration(k) for k in range(4)]
    assert [r.learning_rate for r in rounds] == [5e-7, 5e-7, 1e-7, 1e-7]
    assert [r.loss.beta for r in rounds] == [0.1, 0.1, 0.1, 5.0]
    assert rounds[0] is cfg.train and cfg.train.loss.beta == 0.1  # the section itself is unchanged
    assert RoundSpec.of(rounds[3], cfg.train).learning_rate == 1e-7
    with pytest.raises(ConfigError, match=r"train.per_iteration: iterations \[4\] are past the last one \(3\)"):
        load_config({**BASE, "iterations": 4, "train": {"per_iteration": {4: {"learning_rate": 1e-7}}}})
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config({**BASE, "train": {"per_iteration": {0: {"learning_rate": -1.0}}}})


def test_soft_sppo_reads_the_judges_win_probabilities(tok, tiny_model_dir):
    """The pairs' chosen_score/rejected_score reach the loss: the objective equals the formula on them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3", "chosen_score": 0.8, "rejected_score": 0.3,
             "ref_chosen_logps": -2.0, "ref_rejected_logps": -3.0},
            {"prompt": "2+2=", "chosen": "4", "rejected": "44", "chosen_score": 0.6, "rejected_score": 0.55,
             "ref_chosen_logps": -1.0, "ref_rejected_logps": -4.0}]
    data = encode_pairs(pa.Table.from_pylist(rows), tokenizer, TrainConfig())
    micro = Micro((0, 1), (True, True))
    beta = 0.1
    loss, _ = pair_objective(model, data, micro, LossConfig(type="sppo", beta=beta), tokenizer.pad_token_id,
                             torch.device("cpu"))
    hard, _ = pair_objective(model, data, micro, LossConfig(type="sppo_hard", beta=beta), tokenizer.pad_token_id,
                             torch.device("cpu"))
    # recompute the policy log-probs with the same forward and apply SPPO's formula by hand
    from selfplay.train.objective import run_model, sequence_sums

    logps, _ = sequence_sums(run_model(model, data, (0, 1), ("chosen", "rejected"), tokenizer.pad_token_id,
                                       torch.device("cpu")))
    pc, pr = logps.detach().double().chunk(2)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)
    d_w, d_l = pc - f64([-2.0, -1.0]), pr - f64([-3.0, -4.0])
    p_w, p_l = f64([0.8, 0.6]), f64([0.3, 0.55])
    expected = (0.5 * ((d_w - (p_w - 0.5) / beta) ** 2 + (d_l - (p_l - 0.5) / beta) ** 2)).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert abs(loss.item() - hard.item()) > 1.0  # not the hard-label loss
    no_scores = encode_pairs(pa.Table.from_pylist([{k: v for k, v in r.items() if "score" not in k} for r in rows]),
                             tokenizer, TrainConfig())
    with pytest.raises(ValueError, match="needs the pairs' 'chosen_score' column"):
        pair_objective(model, no_scores, micro, LossConfig(type="sppo", beta=beta), tokenizer.pad_token_id,
                       torch.device("cpu"))


def test_sppo_needs_a_comparing_judge():
    with pytest.raises(ConfigError, match="`sppo` regresses on win probabilities"):
        load_config({**BASE, "train": {"loss": {"type": "sppo", "beta": 0.001}}})
    cfg = load_config({**BASE, "judge": {"type": "pairwise", "path": "/m", "include_self": True},
                       "train": {"loss": {"type": "sppo", "beta": 0.001}}})
    assert cfg.train.loss.type == "sppo" and cfg.judge.include_self
