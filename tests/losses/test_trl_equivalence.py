"""Every loss type that TRL 1.16 also names gives TRL's value, gradient and rewards on the same inputs.

TRL computes its losses inside ``DPOTrainer._compute_loss``, after a model forward. We run that real
method unbound, with a ``SimpleNamespace`` as ``self`` holding exactly the attributes it reads, and a
stand-in "model" whose per-token log-probs are our sequence log-probs put in the first completion
position (TRL sums them over the sequence). The completion mask carries the lengths, which TRL reads
for ``ipo`` and ``sigmoid_norm``. Everything after the forward, the loss math included, is TRL's code.
TRL returns the batch mean, so per-pair values are compared through batches of one pair, the batch
mean and its gradient through a batch of six; the rewards are captured from ``accelerator.gather``.
TRL is a pinned dev dependency and imported plainly: a broken TRL import fails here, it does not skip.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from selfplay.losses import LOSS_PARAMS, kto_loss, preference_loss

# TRL is a dev dependency, absent on the GPU machines (docs/gpu.md): the module skips there.
cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
kto = pytest.importorskip("trl.trainer.kto_trainer")

# our loss_type -> (our params, TRL's DPOConfig fields for the same setting)
SHARED = {
    "sigmoid": [({}, {})],
    "hinge": [({}, {})],
    "ipo": [({}, {})],
    "sigmoid_norm": [({}, {})],
    "robust": [({"label_smoothing": 0.2}, {"label_smoothing": 0.2}), ({}, {})],
    "exo_pair": [
        ({"epsilon": 1e-3}, {"label_smoothing": 1e-3}),
        ({"epsilon": 0.2}, {"label_smoothing": 0.2}),
    ],
    "nca_pair": [({}, {})],
    "bco_pair": [({}, {})],
    "sppo_hard": [({}, {})],
    "aot": [({}, {}), ({"label_smoothing": 0.1}, {"label_smoothing": 0.1})],
    "aot_unpaired": [({}, {}), ({"label_smoothing": 0.1}, {"label_smoothing": 0.1})],
    "apo_zero": [({}, {})],
    "apo_down": [({}, {})],
    "discopop": [({}, {}), ({"tau": 0.5}, {"discopop_tau": 0.5})],
}
CASES = [(name, ours, theirs) for name, settings in SHARED.items() for ours, theirs in settings]
BETA = 0.3


def trl_loss_types() -> set[str]:
    """The loss types TRL 1.16's own error message lists."""
    try:
        trl_dpo.DPOTrainer._compute_loss(_fake_self("no-such-loss", {}, []), *_fake_forward(*_inputs(1)))
    except ValueError as err:
        return {name.strip("'[] ") for name in str(err).split("one of")[1].split(",")}
    raise AssertionError("TRL accepted an unknown loss type")


def _inputs(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (2 * batch,), generator=gen)
    policy = -lengths * (1 + 2 * torch.rand(2 * batch, generator=gen))
    ref = policy + 3 * torch.randn(2 * batch, generator=gen)
    return policy.double(), ref.double(), lengths


def _fake_self(loss_type: str, trl_params: dict, gathered: list):
    config = {"label_smoothing": 0.0, "discopop_tau": 0.05, **trl_params}
    return SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(
            device=torch.device("cpu"),
            gather=lambda t: gathered.append(t) or t,
            gather_for_metrics=lambda t: t,
        ),
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=BETA,
        label_smoothing=config["label_smoothing"],
        args=SimpleNamespace(discopop_tau=config["discopop_tau"]),
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )


def _fake_forward(policy: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor):
    """A model output whose per-token log-probs sum to ``policy``; the mask holds ``lengths``."""
    rows, seq = policy.shape[0], int(lengths.max()) + 1
    completion_mask = (torch.arange(seq) >= 1) & (torch.arange(seq) <= lengths[:, None])  # token 0 is the prompt
    log_probs = F.pad(policy[:, None], (0, seq - 2))  # [2B, seq-1], sum over positions = policy
    out = SimpleNamespace(
        log_probs=log_probs,
        entropy=torch.zeros(rows, seq - 1),
        mean_logits=torch.zeros(rows, seq - 1),
        is_top1=torch.zeros(rows, seq - 1, dtype=torch.bool),
    )
    ref_chosen, ref_rejected = ref.chunk(2)
    inputs = {
        "input_ids": torch.zeros(rows, seq, dtype=torch.long),
        "attention_mask": torch.ones(rows, seq, dtype=torch.long),
        "completion_mask": completion_mask.long(),
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    return (lambda **kwargs: out), inputs, False


def run_trl(loss_type: str, trl_params: dict, policy, ref, lengths):
    policy = policy.clone().requires_grad_()
    gathered: list[torch.Tensor] = []
    loss = trl_dpo.DPOTrainer._compute_loss(
        _fake_self(loss_type, trl_params, gathered), *_fake_forward(policy, ref, lengths)
    )
    loss.backward()
    return loss.detach(), policy.grad, gathered[0], gathered[1]  # chosen, rejected rewards come first


def run_ours(loss_type: str, params: dict, policy, ref, lengths):
    policy = policy.clone().requires_grad_()
    pc, pr = policy.chunk(2)
    rc, rr = ref.chunk(2)
    lc, lr = lengths.chunk(2)
    losses, chosen, rejected = preference_loss(
        loss_type, pc, pr, rc, rr, beta=BETA, chosen_lengths=lc, rejected_lengths=lr, **params
    )
    losses.mean().backward()
    return losses.detach(), policy.grad, chosen, rejected


def test_every_trl_dpo_loss_type_but_sft_is_covered():
    names = trl_loss_types()
    assert "sigmoid" in names and len(names) >= 15
    assert names - {"sft"} == set(SHARED)  # sft is TRL's NLL term, not a preference loss
    assert set(SHARED) <= set(LOSS_PARAMS)


def test_defaults_match_trl_dpo_config():
    fields = trl_dpo.DPOConfig.__dataclass_fields__
    assert LOSS_PARAMS["discopop"]["tau"] == fields["discopop_tau"].default
    for name in ("sigmoid", "robust", "aot", "aot_unpaired"):
        assert LOSS_PARAMS[name]["label_smoothing"] == fields["label_smoothing"].default
    assert LOSS_PARAMS["bco_pair"]["delta"] == 0.0  # TRL 1.16's bco_pair has no reward shift


@pytest.mark.parametrize(("loss_type", "ours", "theirs"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_same_values_gradients_and_rewards_as_trl(loss_type, ours, theirs):
    policy, ref, lengths = _inputs(6, seed=1)
    trl_mean, trl_grad, trl_chosen, trl_rejected = run_trl(loss_type, theirs, policy, ref, lengths)
    losses, grad, chosen, rejected = run_ours(loss_type, ours, policy, ref, lengths)
    # TRL builds exo_pair's ε as a float32 tensor, so its log ε is float32-exact only
    tol = {"rtol": 1e-7, "atol": 1e-7} if loss_type == "exo_pair" else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(losses.mean(), trl_mean, **tol)
    torch.testing.assert_close(grad, trl_grad, **tol)
    torch.testing.assert_close(chosen, trl_chosen)
    torch.testing.assert_close(rejected, trl_rejected)
    for i in range(6):  # per pair: a batch of one
        one_policy, one_ref, one_lengths = (x.view(2, 6)[:, i] for x in (policy, ref, lengths))
        trl_one = run_trl(loss_type, theirs, one_policy, one_ref, one_lengths)[0]
        torch.testing.assert_close(run_ours(loss_type, ours, one_policy, one_ref, one_lengths)[0][0], trl_one, **tol)


def test_trl_ignores_label_smoothing_for_sigmoid_where_we_apply_cdpo():
    """Documented difference: our ``sigmoid`` with ε > 0 is cDPO; TRL 1.16's ``sigmoid`` ignores ε."""
    policy, ref, lengths = _inputs(4, seed=2)
    trl_mean = run_trl("sigmoid", {"label_smoothing": 0.2}, policy, ref, lengths)[0]
    plain = run_ours("sigmoid", {}, policy, ref, lengths)[0].mean()
    smoothed = run_ours("sigmoid", {"label_smoothing": 0.2}, policy, ref, lengths)[0].mean()
    torch.testing.assert_close(plain, trl_mean)
    assert not torch.isclose(smoothed, trl_mean)


def test_simpo_and_orpo_match_trl_experimental_cpo_and_orpo_math():
    """Beyond DPOTrainer: SimPO equals TRL's CPO ``simpo`` and ORPO's odds-ratio term equals TRL ORPO's."""
    policy, _, lengths = _inputs(6, seed=3)
    pc, pr = policy.chunk(2)
    lc, lr = lengths.chunk(2)
    device = SimpleNamespace(device=torch.device("cpu"))
    cpo_self = SimpleNamespace(alpha=0.0, beta=BETA, loss_type="simpo", simpo_gamma=0.7, label_smoothing=0.0,
                               accelerator=device)  # fmt: skip
    trl_losses, trl_chosen, trl_rejected = cpo.CPOTrainer.cpo_loss(cpo_self, pc / lc, pr / lr)
    losses, chosen, rejected = preference_loss(
        "simpo", pc, pr, None, None, beta=BETA, chosen_lengths=lc, rejected_lengths=lr, gamma=0.7
    )
    torch.testing.assert_close(losses, trl_losses)
    torch.testing.assert_close((chosen, rejected), (trl_chosen, trl_rejected))

    orpo_self = SimpleNamespace(beta=0.25, accelerator=device)  # TRL's ORPO `beta` is the paper's λ
    trl_terms = orpo.ORPOTrainer.odds_ratio_loss(orpo_self, pc / lc, pr / lr)[0]  # = λ·log σ(log odds ratio)
    losses = preference_loss(
        "orpo", pc, pr, None, None, beta=0.25, chosen_lengths=lc, rejected_lengths=lr, lambda_=0.25
    )[0]
    torch.testing.assert_close(losses - (-pc / lc), -trl_terms.double())


@pytest.mark.parametrize("kl_shift", [0.0, 10.0])  # 10 makes the mismatched log-ratio mean < 0: z0 = 0
def test_kto_matches_trl_kto_trainer(kl_shift):
    """``kto_loss`` against TRL 1.16's ``KTOTrainer._compute_loss`` (same stand-in technique as above)."""
    policy, ref, lengths = _inputs(4, seed=4)  # 8 unpaired examples
    labels = torch.tensor([True, False, False, True, True, False, True, True])
    kl_policy, kl_ref = policy.roll(1) + 4.0, ref.roll(1) + kl_shift
    model, batch, _ = _fake_forward(policy.clone().requires_grad_(), ref, lengths)
    batch |= {"label": labels, "ref_logps": ref, "ref_KL_logps": kl_ref}
    metrics = defaultdict(lambda: defaultdict(list))
    trl_self = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda t: t),
        _compute_kl_logps=lambda model, batch: kl_policy,
        aux_loss_enabled=False, precompute_ref_logps=True, calculate_KL=True, loss_type="kto", beta=BETA,
        desirable_weight=1.3, undesirable_weight=0.7, _metrics=metrics, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    policy_leaf = model().log_probs
    trl_loss = kto.KTOTrainer._compute_loss(trl_self, model, batch, False)
    (trl_grad,) = torch.autograd.grad(trl_loss, policy_leaf)

    mine = policy.clone().requires_grad_()
    losses, rewards, kl = kto_loss(
        mine, ref, labels, kl_policy, kl_ref, beta=BETA, desirable_weight=1.3, undesirable_weight=0.7
    )
    losses.mean().backward()
    torch.testing.assert_close(losses.mean(), trl_loss.detach())
    torch.testing.assert_close(mine.grad, trl_grad[:, 0])
    assert kl.item() == pytest.approx(metrics["train"]["kl"][-1])
    assert (kl.item() == 0.0) == (kl_shift > 0)
    assert rewards[labels].mean().item() == pytest.approx(metrics["train"]["rewards/chosen"][-1])
    assert rewards[~labels].mean().item() == pytest.approx(metrics["train"]["rewards/rejected"][-1])
