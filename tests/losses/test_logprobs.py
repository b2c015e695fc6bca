"""Chunked per-token log-probs and KL: equal to the full log_softmax path, and never a full-vocab copy."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from selfplay.losses import next_token_targets, sequence_logps, token_kl, token_logps

B, T, V = 3, 7, 11


def random_batch(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, T, V, generator=gen)).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.rand(B, T, generator=gen) > 0.3
    labels[~mask] = -100  # ignored positions may hold anything
    return logits, labels, mask


def reference_token_logps(logits, labels, mask):
    logp = torch.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, dim=-1)
    return logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask


@pytest.mark.parametrize("chunk_rows", [1, 3, T, 1000])
def test_token_logps_match_log_softmax_gather_values_and_gradients(chunk_rows):
    logits, labels, mask = random_batch()
    got = token_logps(logits, labels, mask, chunk_rows=chunk_rows)
    want = reference_token_logps(logits, labels, mask)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (got[~mask] == 0).all() and (got[mask] < 0).all()
    weights = torch.randn(B, T, dtype=torch.float64)
    (grad_got,) = torch.autograd.grad((got * weights).sum(), logits)
    (grad_want,) = torch.autograd.grad((want * weights).sum(), logits)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-10, atol=1e-12)


def test_token_logps_gradcheck():
    logits, labels, mask = random_batch()
    assert torch.autograd.gradcheck(lambda x: token_logps(x, labels, mask, chunk_rows=2), (logits,))


def test_non_contiguous_logits_and_bfloat16():
    logits, labels, mask = random_batch()
    wide = torch.randn(B, T + 1, V, dtype=torch.float64)
    wide[:, :T] = logits.detach()
    view = wide[:, :T]  # a strided view, as from logits[:, :-1]
    assert not view.is_contiguous()
    torch.testing.assert_close(token_logps(view, labels, mask, chunk_rows=2), reference_token_logps(view, labels, mask))
    half = logits.detach().to(torch.bfloat16).requires_grad_()
    got = token_logps(half, labels, mask, chunk_rows=4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference_token_logps(half.float(), labels, mask), rtol=1e-5, atol=1e-5)
    got.sum().backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()


def test_next_token_targets_shift_by_one():
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])
    completion = torch.tensor([[0, 0, 1, 1, 0]])  # tokens 7 and 8 are the completion, 9 is padding
    labels, mask = next_token_targets(input_ids, completion)
    assert labels.tolist() == [[6, 7, 8, 9, 0]]
    assert mask.tolist() == [[False, True, True, False, False]]  # logits at t=1 predict 7, at t=2 predict 8


def test_sequence_logps_of_a_tiny_causal_model_match_the_chain_rule():
    """logits[:, t] from tokens <= t; the completion's log-prob is Σ_t log p(x_{t+1} | x_<=t)."""
    torch.manual_seed(0)
    embed, head = torch.nn.Embedding(V, 5).double(), torch.nn.Linear(5, V).double()
    input_ids = torch.randint(0, V, (2, 6))
    completion = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]])  # chosen row, rejected row
    logits = head(torch.cumsum(embed(input_ids), dim=1))  # causal: position t sees tokens <= t
    sums, lengths = sequence_logps(logits, *next_token_targets(input_ids, completion), chunk_rows=4)
    manual = []
    for row in range(2):
        logp = torch.log_softmax(logits[row], -1)
        manual.append(sum(logp[t - 1, input_ids[row, t]] for t in range(1, 6) if completion[row, t]))
    torch.testing.assert_close(sums, torch.stack(manual))
    assert lengths.tolist() == [4, 2] and lengths.dtype == torch.int64
    chosen, rejected = sums.chunk(2)  # the [chosen; rejected] convention
    assert chosen.shape == rejected.shape == (1,)


def reference_kl(policy_logits, ref_logits, mask):
    ref_logp = torch.log_softmax(ref_logits, -1)
    return (ref_logp.exp() * (ref_logp - torch.log_softmax(policy_logits, -1))).sum(-1) * mask


@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
def test_token_kl_matches_full_computation(chunk_rows):
    policy, _, mask = random_batch(seed=1)
    ref = random_batch(seed=2)[0].detach().requires_grad_()
    got = token_kl(policy, ref, mask, chunk_rows=chunk_rows)
    want = reference_kl(policy, ref.detach(), mask)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (got[mask] > 0).all() and (got[~mask] == 0).all()
    (grad_want,) = torch.autograd.grad(want.sum(), policy)
    got.sum().backward()
    torch.testing.assert_close(policy.grad, grad_want, rtol=1e-10, atol=1e-12)
    assert ref.grad is None  # the reference is a constant
    same = token_kl(policy, policy.detach(), mask)
    torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-12, rtol=0)


def test_token_kl_with_masked_reference_vocabulary_is_finite():
    policy, _, mask = random_batch(seed=5)
    ref = random_batch(seed=6)[0].detach().clone()
    ref[..., :3] = float("-inf")  # e.g. padded vocabulary entries the reference can never emit
    got = token_kl(policy, ref, mask, chunk_rows=2)
    ref_p = torch.softmax(ref[..., 3:], -1)
    pol_logp = torch.log_softmax(policy, -1)[..., 3:]
    want = (ref_p * (ref_p.log() - pol_logp)).sum(-1) * mask
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert torch.isfinite(policy.grad).all()


def test_token_kl_gradcheck():
    policy, _, mask = random_batch(seed=3)
    ref = random_batch(seed=4)[0].detach()
    assert torch.autograd.gradcheck(lambda x: token_kl(x, ref, mask, chunk_rows=3), (policy,))


def test_bad_inputs_raise():
    logits, labels, mask = random_batch()
    with pytest.raises(ValueError, match="chunk_rows"):
        token_logps(logits, labels, mask, chunk_rows=0)
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        token_logps(logits[0], labels, mask)
    with pytest.raises(ValueError, match="mask must match"):
        token_logps(logits, labels, mask[:, :-1])
    with pytest.raises(ValueError, match="integer"):
        token_logps(logits, labels.double(), mask)
    with pytest.raises(ValueError, match="must match policy_logits"):
        token_kl(logits, logits[..., :-1], mask)


# --- memory -------------------------------------------------------------------------------------------
class NewAllocations(TorchDispatchMode):
    """Records the size of every tensor an aten op allocates (outputs not sharing an input's storage)."""

    def __init__(self):
        super().__init__()
        self.numels: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.numels.append((str(func), t.numel()))
        return out


def _allocations(fn, *args):
    with NewAllocations() as forward:
        out = fn(*args)
    with NewAllocations() as backward:
        out.sum().backward()
    return [n for _, n in forward.numels], [n for _, n in backward.numels]


def test_no_full_vocabulary_copy_is_allocated():
    """Forward allocates at most one block (chunk_rows × V); backward only the gradient plus blocks.

    The memory argument (see ``selfplay.losses.logprobs``) is checked on what each op allocates, since
    CPU torch has no peak-memory counter. The plain ``log_softmax`` path fails the same check.
    """
    batch, seq, vocab, chunk = 2, 16, 64, 4
    full, block = batch * seq * vocab, chunk * vocab
    logits = torch.randn(batch, seq, vocab, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.bool)

    fwd, bwd = _allocations(lambda x: token_logps(x, labels, mask, chunk_rows=chunk), logits)
    assert max(fwd) <= block
    assert sorted(bwd)[-1] == full and sorted(bwd)[-2] <= block  # the gradient itself, then blocks

    ref = torch.randn(batch, seq, vocab)
    logits.grad = None
    fwd, bwd = _allocations(lambda x: token_kl(x, ref, mask, chunk_rows=chunk), logits)
    assert max(fwd) <= block
    assert sorted(bwd)[-1] == full and sorted(bwd)[-2] <= block

    # bf16 logits are upcast block by block, so the block buffers are visible here: exactly chunk × V
    half = logits.detach().to(torch.bfloat16).requires_grad_()
    fwd, bwd = _allocations(lambda x: token_logps(x, labels, mask, chunk_rows=chunk), half)
    assert max(fwd) == block
    assert sorted(bwd)[-1] == full and sorted(bwd)[-2] <= block

    logits.grad = None
    fwd, _ = _allocations(lambda x: reference_token_logps(x, labels, mask), logits)
    assert max(fwd) == full  # positive control: log_softmax materialises the whole B×T×V
