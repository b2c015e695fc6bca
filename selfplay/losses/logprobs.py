"""Per-token log-probs and per-token KL from logits, without a second full-vocabulary copy.

**The shift lives in one place: :func:`next_token_targets`.** A causal LM's logits at position t score the
token at t+1. ``next_token_targets(input_ids, completion_mask)`` returns ``labels[:, t] = input_ids[:, t+1]``
and the matching mask (last column 0), so that every other function here takes *aligned* inputs:
``logits[:, t]`` is the distribution for ``labels[:, t]``. Pass the model's logits unsliced.

A preference batch stacks the chosen rows, then the rejected rows, along B (``[chosen; rejected]``, as
TRL does); split any ``[2B]`` result with ``.chunk(2)``.

Memory. ``log_softmax(logits)`` materialises a second ``B×T×V`` tensor and autograd keeps it until
backward: for B=8, T=2048, V=128k in fp32 that is about 8 GiB on top of the logits. Here instead:

* forward: gather the label logit (``B×T``), and subtract a logsumexp computed over blocks of at most
  ``chunk_rows`` positions (views of the logits, upcast to fp32 one block at a time). Extra memory:
  ``O(chunk_rows·V)`` for the block (a few blocks for :func:`token_kl`) plus ``O(B·T)`` for the results.
* backward: a custom autograd function saves only a reference to the logits (no copy) and the
  ``B×T`` logsumexp, then writes ``g·(onehot − softmax)`` block by block into the gradient. Extra memory:
  the gradient itself (``B×T×V``, which any method must produce) plus ``O(chunk_rows·V)``.

So the peak above the logits is a few vocabulary blocks in forward and the gradient plus a few blocks
in backward (``tests/losses/test_logprobs.py`` checks what every op allocates). Double backward is not
supported. :func:`token_kl` works the same way for two logit tensors; the reference logits are treated
as constants (no gradient flows into them).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK_ROWS = 256
"""Positions per block: 256 × V=128k × 4 bytes = 128 MiB of fp32 scratch."""


def next_token_targets(input_ids: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Shift ``[B, T]`` token ids and the mask of scored tokens by one: ``labels[:, t] = input_ids[:, t+1]``.

    ``completion_mask[:, t]`` is nonzero where ``input_ids[:, t]`` is a completion token to score (in a
    multi-turn completion, an assistant token of the segment: user turns between are context). The
    returned ``mask`` is aligned with the logits (``mask[:, t]`` scores ``labels[:, t]``); its last column
    is 0 because no logit predicts a token past the end.
    """
    if input_ids.shape != completion_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids and completion_mask must both be [B, T], got {tuple(input_ids.shape)} "
            f"and {tuple(completion_mask.shape)}"
        )
    labels = torch.zeros_like(input_ids)
    labels[:, :-1] = input_ids[:, 1:]
    mask = torch.zeros_like(completion_mask, dtype=torch.bool)
    mask[:, :-1] = completion_mask[:, 1:].bool()
    return labels, mask


def _blocks(batch: int, seq: int, chunk_rows: int):
    """(b, t0, t1) blocks covering a [B, T] grid, each at most chunk_rows positions, each a view."""
    for b in range(batch):
        for t0 in range(0, seq, chunk_rows):
            yield b, t0, min(t0 + chunk_rows, seq)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _LabelLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, mask: Tensor, chunk_rows: int) -> Tensor:
        batch, seq, _ = logits.shape
        dtype = _compute_dtype(logits.dtype)
        lse = torch.empty(batch, seq, dtype=dtype, device=logits.device)
        for b, t0, t1 in _blocks(batch, seq, chunk_rows):
            lse[b, t0:t1] = torch.logsumexp(logits[b, t0:t1].to(dtype), dim=-1)
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).to(dtype)
        ctx.save_for_backward(logits, labels, mask, lse)
        ctx.chunk_rows = chunk_rows
        return (picked - lse).masked_fill(~mask, 0.0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, labels, mask, lse = ctx.saved_tensors
        g = grad_out.masked_fill(~mask, 0.0)
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        for b, t0, t1 in _blocks(*logits.shape[:2], ctx.chunk_rows):
            gb = g[b, t0:t1].unsqueeze(-1)
            block = torch.exp(logits[b, t0:t1].to(lse.dtype) - lse[b, t0:t1].unsqueeze(-1)).mul_(-gb)
            block.scatter_add_(-1, labels[b, t0:t1].unsqueeze(-1), gb)  # d(z_label)/dz = onehot
            grad[b, t0:t1] = block
        return grad, None, None, None


class _TokenKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, policy_logits: Tensor, ref_logits: Tensor, mask: Tensor, chunk_rows: int) -> Tensor:
        batch, seq, _ = policy_logits.shape
        dtype = _compute_dtype(policy_logits.dtype)
        kl = torch.empty(batch, seq, dtype=dtype, device=policy_logits.device)
        lse = torch.empty_like(kl)
        for b, t0, t1 in _blocks(batch, seq, chunk_rows):
            z = policy_logits[b, t0:t1].to(dtype)
            lse[b, t0:t1] = torch.logsumexp(z, dim=-1)
            ref_logp = torch.log_softmax(ref_logits[b, t0:t1].to(dtype), dim=-1)
            # KL(ref || pol) = Σ_v p_ref (log p_ref − log p_pol); terms with p_ref = 0 (−inf ref logits,
            # e.g. a masked vocabulary) are 0, not 0·inf = NaN
            diff = ref_logp - (z - lse[b, t0:t1].unsqueeze(-1))
            p_ref = ref_logp.exp_()
            kl[b, t0:t1] = torch.where(p_ref > 0, p_ref * diff, 0.0).sum(-1)
        ctx.save_for_backward(policy_logits, ref_logits, mask, lse)
        ctx.chunk_rows = chunk_rows
        return kl.masked_fill(~mask, 0.0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        policy_logits, ref_logits, mask, lse = ctx.saved_tensors
        g = grad_out.masked_fill(~mask, 0.0)
        grad = torch.empty(policy_logits.shape, dtype=policy_logits.dtype, device=policy_logits.device)
        for b, t0, t1 in _blocks(*policy_logits.shape[:2], ctx.chunk_rows):
            p = torch.exp(policy_logits[b, t0:t1].to(lse.dtype) - lse[b, t0:t1].unsqueeze(-1))
            p_ref = torch.softmax(ref_logits[b, t0:t1].to(lse.dtype), dim=-1)
            grad[b, t0:t1] = (p - p_ref).mul_(g[b, t0:t1].unsqueeze(-1))  # d KL / d z = softmax(z) − p_ref
        return grad, None, None, None


def _check(logits: Tensor, labels_or_mask: Tensor, mask: Tensor, chunk_rows: int) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    for name, t in {"labels/ref": labels_or_mask, "mask": mask}.items():
        if tuple(t.shape[:2]) != tuple(logits.shape[:2]):
            raise ValueError(f"{name} must match logits' [B, T] = {tuple(logits.shape[:2])}, got {tuple(t.shape)}")
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")


def token_logps(logits: Tensor, labels: Tensor, mask: Tensor, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Tensor:
    """``log softmax(logits)[b, t, labels[b, t]]`` as ``[B, T]``, 0 where ``mask`` is 0.

    ``logits[B, T, V]`` and ``labels[B, T]`` are aligned (see :func:`next_token_targets`); labels at
    masked positions are ignored (may be -100). Result dtype: fp32, or fp64 for fp64 logits.
    """
    _check(logits, labels, mask, chunk_rows)
    if labels.shape != logits.shape[:2] or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer [B, T] tensor, got {labels.dtype} {tuple(labels.shape)}")
    mask = mask.bool()
    return _LabelLogProb.apply(logits, labels.masked_fill(~mask, 0), mask, chunk_rows)


def sequence_logps(
    logits: Tensor, labels: Tensor, mask: Tensor, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs and completion lengths: ``(sums[B], lengths[B])`` (lengths int64)."""
    per_token = token_logps(logits, labels, mask, chunk_rows=chunk_rows)
    return per_token.sum(-1), mask.bool().sum(-1)


def token_kl(
    policy_logits: Tensor, ref_logits: Tensor, mask: Tensor, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Tensor:
    """Per-token ``KL(π_ref(·|t) ‖ π(·|t))`` as ``[B, T]``, 0 where ``mask`` is 0 (TDPO's token KL).

    Both logits are ``[B, T, V]`` and aligned with the same mask. Gradient flows to ``policy_logits``
    only; ``ref_logits`` are treated as constants. Sum over T for TDPO's ``D_SeqKL``.
    """
    _check(policy_logits, ref_logits, mask, chunk_rows)
    if ref_logits.shape != policy_logits.shape:
        raise ValueError(f"ref_logits {tuple(ref_logits.shape)} must match policy_logits {tuple(policy_logits.shape)}")
    return _TokenKL.apply(policy_logits, ref_logits.detach(), mask.bool(), chunk_rows)
