"""One micro-batch through the model: log-probs, the configured loss, and the statistics to log.

Each objective family (``family.py``) binds exactly one function here as its micro-batch loss (KTO:
plus :func:`kto_step_kl` as its per-step hook); the loss formulas themselves are the pure functions of
:mod:`selfplay.losses`. Choices:

* **KTO's reference point is per step**: its mismatched-KL rows are scored without gradient for the
  whole step on every rank before any backward, so ``z0`` does not depend on how the step is split.
* **Chosen and rejected in one forward**, concatenated along the batch. By default the shared prompt
  runs first, once per example, and both completions then run in one forward on its KV cache
  (``run_model``): same logits, a third fewer tokens for typical pairs. When the two sides pad very
  differently (SPIN's short reference answers against long samples), each runs its own forward on the
  cache instead; and logits are computed only at positions that score a completion token.
* **Summed, not averaged**: each function returns the *sum* of ``weight * loss`` over the real examples
  of the micro-batch. The learner divides by the example count of the whole optimizer step (all ranks,
  all accumulation micro-batches; SFT: completion tokens), known from the plan without communication.
  That makes the gradient independent of how a step is split into ranks x accumulation.
* **AOT** sorts over the micro-batch; its per-pair weights are averaged (see ``QUANTILE_LOSSES``).
* Statistics are detached float64 sums (``count``, rewards, correct, log-probs, ``tokens``, ``nonfinite``),
  so the learner can all-reduce them in one vector and divide at the end.
* ``tdpo`` needs the reference's full next-token distribution, which cannot be precomputed as a column:
  it takes the logits of a frozen reference model in the same step (see ``reference.py``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from selfplay.losses import (
    REFERENCE_FREE,
    kto_loss,
    next_token_targets,
    preference_loss,
    tdpo_loss,
    token_kl,
    token_logps,
)
from selfplay.train.batches import Micro, collate, collate_shared, column
from selfplay.train.data import Encoded

STAT_KEYS = ("count", "loss", "chosen_count", "rejected_count", "chosen_rewards", "rejected_rewards", "correct",
             "chosen_logps", "rejected_logps", "tokens", "nonfinite", "kl")
"""The summed statistics every objective returns (float64 0-d tensors); the learner divides them."""

QUANTILE_LOSSES = frozenset({"aot", "aot_unpaired"})
"""Losses whose entry i belongs to the i-th sorted quantile of the micro-batch, not to pair i: a per-pair
``weight`` cannot be matched to its loss, so each quantile gets the micro-batch's mean weight (the sum is
then invariant to the order of the pairs, and a weight-0 filler micro-batch still contributes 0)."""


@dataclass
class Scored:
    """Model outputs aligned with the completion tokens they score, for N = K*B sequences.

    ``logits[:, t]`` is the distribution of ``labels[:, t]``; ``mask`` marks completion tokens. Rows may be
    in any order; ``x[order]`` puts a per-row result ``x`` in key-major order (all ``keys[0]`` rows, then
    all ``keys[1]`` rows, ...).
    """

    logits: Tensor
    labels: Tensor
    mask: Tensor
    order: Tensor
    tokens: Tensor
    """Real tokens run through the model per example, [B] (a shared prompt counts once)."""


@dataclass
class ScoredByKey:
    """One :class:`Scored` per completion key, in key order, each padded to its own longest completion
    (what :func:`run_model` returns when that runs markedly fewer tokens than one shared padding)."""

    parts: tuple[Scored, ...]
    tokens: Tensor
    """As :attr:`Scored.tokens`."""


SPLIT_BELOW = 0.8
"""A prefix-shared micro-batch runs one completion forward per key when that pads to at most this share
of the tokens one forward over all keys would run. In self-play the keys' lengths often differ by kind
(SPIN: short reference answers against samples that run to ``max_tokens``, as in ``bench.iteration``'s
pairs)."""


def run_model(model: Any, data: Encoded, indices: tuple[int, ...] | list[int], keys: tuple[str, ...],
              pad_id: int, device: torch.device, share_prefix: bool = True, split: bool = True
              ) -> Scored | ScoredByKey:
    """One micro-batch of ``len(keys)`` completions per example through ``model``.

    With ``share_prefix`` (and more than one completion per example) the prompt runs once and its KV cache
    is reused by each completion, the "prefix sharing" of preference training: chosen and rejected share
    the prompt, so this skips a third to a half of the tokens of a typical self-play pair. The logits are
    the same as a full forward up to float rounding. Without it (gradient checkpointing, one completion)
    the K full sequences go through one ordinary forward.

    With ``split`` (and prefix sharing), keys whose completions differ much in length run one forward
    each on the prompt's cache (see :data:`SPLIT_BELOW`), and a :class:`ScoredByKey` comes back: only
    :func:`sequence_sums` reads it. Callers that compare per-token logits (TDPO) pass ``split=False``, and
    so do ZeRO-3 ranks: the decision is per micro-batch, and ranks that ran different numbers of forwards
    would fall out of step in ZeRO-3's collective parameter gathers. For the same reason a learner decides
    the sliding-window fallback below once per round (:func:`shares_prefix`), so it never triggers here.
    """
    k, b = len(keys), len(indices)
    if share_prefix and k > 1 and (window := sliding_window(model)) is not None:
        longest = max(len(data.prompts[i]) for i in indices) + max(len(data.completions[key][i])
                                                                   for i in indices for key in keys)
        share_prefix = longest <= window  # past it, a short prompt's padding pushes the prompt out of the window
    if not share_prefix or k == 1:
        batch = {n: v.to(device) for n, v in collate(data, indices, pad_id, keys).items()}
        labels, mask = next_token_targets(batch["input_ids"], batch["loss_mask"])
        scored_from = int(mask.any(0).nonzero()[0]) if mask.any() else 0  # no logit before it scores a token
        out = _forward(model, mask.shape[1] - scored_from, input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"], use_cache=False)
        tokens = batch["attention_mask"].sum(-1).view(k, b).sum(0)
        return Scored(out.logits, labels[:, scored_from:], mask[:, scored_from:], torch.arange(k * b, device=device),
                      tokens)
    batch = {n: v.to(device) for n, v in collate_shared(data, indices, pad_id, keys).items()}
    prompt_len = batch["prompt_lengths"]
    ends = torch.unique(prompt_len - 1)  # sorted: the prompt's logits are needed at its last token only
    out = _forward(model, ends, input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], use_cache=True)
    cache = out.past_key_values
    last = out.logits[torch.arange(b, device=device), torch.searchsorted(ends, prompt_len - 1)]
    ids, cmask, smask = batch["completion_ids"], batch["completion_mask"], batch["score_mask"]
    per_key = cmask.view(b, k, -1).sum(-1).amax(0).tolist()  # each key's longest completion
    if split and b * sum(per_key) <= SPLIT_BELOW * k * b * ids.shape[1]:
        parts = []
        for j, width in enumerate(per_key):
            rows = torch.arange(j, k * b, k, device=device)
            parts.append(_continue(model, _fork(cache) if j < k - 1 else cache, batch["prompt_mask"], prompt_len,
                                   last, ids[rows, :width], cmask[rows, :width], smask[rows, :width],
                                   torch.arange(b, device=device)))
        return ScoredByKey(tuple(parts), prompt_len + cmask.sum(-1).view(b, k).sum(-1))
    cache.batch_repeat_interleave(k)  # differentiable: gradients reach the prompt through the cache
    positions = prompt_len.repeat_interleave(k)[:, None] + torch.arange(ids.shape[1], device=device)[None]
    attention = torch.cat([batch["prompt_mask"].repeat_interleave(k, 0), cmask], dim=1)
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, past_key_values=cache,
                use_cache=True)
    logits = torch.cat([last.repeat_interleave(k, 0)[:, None], out.logits[:, :-1]], dim=1)
    order = torch.arange(k * b, device=device).view(b, k).t().reshape(-1)
    tokens = prompt_len + cmask.sum(-1).view(b, k).sum(-1)
    return Scored(logits, ids, smask, order, tokens)


def shares_prefix(model: Any, data: Encoded, wanted: bool = True) -> bool:
    """Whether a whole round on ``data`` may share prompts (the same answer on every rank, which all hold
    ``data``): not past a sliding window (see :func:`sliding_window`)."""
    window = sliding_window(model) if wanted else None
    if window is None or not len(data):
        return wanted
    longest = max(len(p) for p in data.prompts) + max(len(c) for cs in data.completions.values() for c in cs)
    return longest <= window


def sliding_window(model: Any) -> int | None:
    """The attention window of a model with sliding-window layers (Gemma-2/3, Mistral, Phi-3, Qwen2 with
    ``use_sliding_window``), else None. A prefix-shared forward right-pads the prompts, so the completion
    of a short prompt starts after the padding: once padded prompt plus completion pass the window, the
    cache's window slides over the padding and that prompt drops out of its completion's view."""
    config = getattr(model, "config", None) or getattr(getattr(model, "module", None), "config", None)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)


def _forward(model: Any, keep: int | Tensor, **inputs: Any) -> Any:
    """``model(**inputs)`` with logits at the sequence positions ``keep`` only (an int n: the last n; a
    sorted 1-D tensor: those positions). The rest are never computed where the model takes HF's
    ``logits_to_keep``: with a real vocabulary the unscored prompt positions would otherwise dominate
    the step's memory (a 300-token prompt at 152k vocabulary is 182 MB of fp32 logits per sequence)."""
    if _takes_logits_to_keep(model):
        return model(**inputs, logits_to_keep=keep)
    out = model(**inputs)
    out.logits = out.logits[:, -keep:] if isinstance(keep, int) else out.logits[:, keep]
    return out


_LOGITS_TO_KEEP: dict[type, bool] = {}


def _takes_logits_to_keep(model: Any) -> bool:
    """Whether the HF model under a DeepSpeed engine or PEFT wrapper declares ``logits_to_keep``."""
    inner = getattr(model, "module", model)  # DeepSpeedEngine
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT
    cls = type(inner)
    if cls not in _LOGITS_TO_KEEP:
        _LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(cls.forward).parameters
    return _LOGITS_TO_KEEP[cls]


def _continue(model: Any, cache: Any, prompt_mask: Tensor, prompt_len: Tensor, last: Tensor, ids: Tensor,
              cmask: Tensor, smask: Tensor, order: Tensor) -> Scored:
    """One key's completions [B, T] through ``model`` on the prompts' KV ``cache`` (consumed); ``smask``
    marks the tokens to score (``cmask`` less a multi-turn completion's user turns)."""
    positions = prompt_len[:, None] + torch.arange(ids.shape[1], device=ids.device)[None]
    out = model(input_ids=ids, attention_mask=torch.cat([prompt_mask, cmask], dim=1), position_ids=positions,
                past_key_values=cache, use_cache=True)
    logits = torch.cat([last[:, None], out.logits[:, :-1]], dim=1)
    return Scored(logits, ids, smask, order, prompt_len + cmask.sum(-1))


def _fork(cache: Any) -> Any:
    """A copy of a KV cache that a forward can extend without touching ``cache``: the layers are copied,
    the tensors shared (an update concatenates into a new tensor), so gradients still reach the prompt."""
    twin = copy.copy(cache)
    twin.layers = [copy.copy(layer) for layer in cache.layers]
    return twin


def sequence_sums(scored: Scored | ScoredByKey) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs and completion lengths, [K*B] in key-major order, fp32."""
    if isinstance(scored, ScoredByKey):
        sums, lengths = zip(*(sequence_sums(part) for part in scored.parts))
        return torch.cat(sums), torch.cat(lengths)
    per_token = token_logps(scored.logits, scored.labels, scored.mask)
    return per_token.sum(-1)[scored.order], scored.mask.sum(-1)[scored.order]


def _weights(data: Encoded, micro: Micro, device: torch.device) -> Tensor:
    w = column(data, "weight", micro.indices, default=1.0) * torch.tensor(micro.real, dtype=torch.float64)
    return w.to(device=device, dtype=torch.float32)


def _ref(data: Encoded, name: str, micro: Micro, device: torch.device) -> Tensor:
    values = column(data, name, micro.indices)
    if values is None:
        raise ValueError(f"reference column {name!r} is missing: call compute_reference(pairs) first")
    return values.to(device=device, dtype=torch.float32)


def _offsets(data: Encoded, micro: Micro, device: torch.device) -> Tensor:
    """ODPO's per-pair offsets (the pairs table's ``offset`` column, derived from the judge scores)."""
    values = column(data, "offset", micro.indices)
    bad = [] if values is None else [int(data.rows[i]) for i, v in zip(micro.indices, values) if not torch.isfinite(v)]
    if values is None or bad:
        where = "the pairs table has no `offset` column" if values is None else f"table rows {bad} have none"
        raise ValueError(f"loss 'odpo' needs a per-pair offset from judge scores, but {where}; "
                         "pairs built from judged samples carry it (selfplay.pairs.build.odpo_offset)")
    return values.to(device=device, dtype=torch.float32)


def _win_probs(data: Encoded, micro: Micro, device: torch.device) -> dict[str, Tensor]:
    """SPPO's per-pair win probabilities: the judge's scores of the chosen and rejected samples."""
    out = {}
    for param, name in (("chosen_probs", "chosen_score"), ("rejected_probs", "rejected_score")):
        values = column(data, name, micro.indices)
        if values is None:
            raise ValueError(f"loss sppo needs the pairs' {name!r} column (win probabilities from the judge)")
        out[param] = values.to(device=device, dtype=torch.float32)
    return out


def _stats(weights: Tensor, losses: Tensor, chosen: Tensor, rejected: Tensor, chosen_r: Tensor,
           rejected_r: Tensor, chosen_lp: Tensor, rejected_lp: Tensor, correct: Tensor, tokens: Tensor,
           kl: Tensor | float = 0.0, loss_weights: Tensor | None = None) -> dict[str, Tensor]:
    """Sums over real examples; ``chosen``/``rejected`` select which examples carry each side's values.

    ``loss_weights`` (default ``weights``) multiply ``losses`` where entry i of the losses is not example i.
    """
    real = (weights > 0).to(torch.float64)
    loss_weights = weights if loss_weights is None else loss_weights
    c, r = chosen.to(torch.float64) * real, rejected.to(torch.float64) * real
    s = lambda t, m: (torch.nan_to_num(t.detach().to(torch.float64)) * m).sum()
    finite = torch.isfinite(losses.detach()) | (real == 0)
    return {
        "count": real.sum(),
        "loss": s(losses * loss_weights.to(losses.dtype), (loss_weights > 0).to(torch.float64)),
        "chosen_count": c.sum(),
        "rejected_count": r.sum(),
        "chosen_rewards": s(chosen_r, c),
        "rejected_rewards": s(rejected_r, r),
        "correct": s(correct.to(torch.float64), real),
        "chosen_logps": s(chosen_lp, c),
        "rejected_logps": s(rejected_lp, r),
        "tokens": tokens.detach().to(torch.float64),
        "nonfinite": (~finite).sum().to(torch.float64),
        "kl": torch.as_tensor(kl, dtype=torch.float64).detach() * real.sum(),
    }


def _tokens(scored: Scored | ScoredByKey, weights: Tensor) -> Tensor:
    """Tokens run through the model for the real examples of a micro-batch."""
    return (scored.tokens * (weights > 0)).sum()


PAIR_INPUTS: dict[str, Callable[[Encoded, Micro, torch.device], dict[str, Tensor]]] = {
    "odpo": lambda data, micro, device: {"offset": _offsets(data, micro, device)},
    "sppo": lambda data, micro, device: _win_probs(data, micro, device),
}
"""Pair losses that read per-pair columns besides the log-probs: the loss parameters read from them."""


def pair_objective(model: Any, data: Encoded, micro: Micro, loss_cfg: Any, pad_id: int, device: torch.device,
                   share_prefix: bool = True, split: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    """Summed weighted preference loss (DPO family) of one micro-batch, and its statistics.

    ``split``: see :func:`run_model` (ZeRO-3 passes False: every rank must run the same forwards)."""
    scored = run_model(model, data, micro.indices, ("chosen", "rejected"), pad_id, device, share_prefix, split)
    logps, lengths = sequence_sums(scored)
    pc, pr = logps.chunk(2)
    lc, lr = lengths.chunk(2)
    rc = rr = None
    if loss_cfg.type not in REFERENCE_FREE:
        rc = _ref(data, "ref_chosen_logps", micro, device)
        rr = _ref(data, "ref_rejected_logps", micro, device)
    params = loss_cfg.resolved_params()
    if (inputs := PAIR_INPUTS.get(loss_cfg.type)) is not None:
        params.update(inputs(data, micro, device))
    losses, chosen_r, rejected_r = preference_loss(loss_cfg.type, pc, pr, rc, rr, beta=loss_cfg.beta,
                                                   chosen_lengths=lc, rejected_lengths=lr, **params)
    quantiles = loss_cfg.type in QUANTILE_LOSSES
    return _pair_result(scored, data, micro, loss_cfg, device, losses, chosen_r, rejected_r, pc, pr, lc, quantiles)


def tdpo_objective(model: Any, data: Encoded, micro: Micro, loss_cfg: Any, pad_id: int, device: torch.device,
                   ref_model: Any, share_prefix: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    """TDPO's summed weighted loss of one micro-batch: ``ref_model`` (frozen) runs the same micro-batch
    for its per-token distributions. Both sides share one padding (no ``split``): their logits are
    compared position by position."""
    keys = ("chosen", "rejected")
    scored = run_model(model, data, micro.indices, keys, pad_id, device, share_prefix, split=False)
    logps, lengths = sequence_sums(scored)
    pc, pr = logps.chunk(2)
    lc, _ = lengths.chunk(2)
    with torch.no_grad():
        ref_scored = run_model(ref_model, data, micro.indices, keys, pad_id, device, share_prefix, split=False)
        ref_logps, _ = sequence_sums(ref_scored)
    seq_kl = token_kl(scored.logits, ref_scored.logits, scored.mask).sum(-1)[scored.order]
    rc, rr = ref_logps.chunk(2)
    kc, kr = seq_kl.chunk(2)
    losses, chosen_r, rejected_r = tdpo_loss(pc, pr, rc, rr, kc, kr, beta=loss_cfg.beta, **loss_cfg.resolved_params())
    return _pair_result(scored, data, micro, loss_cfg, device, losses, chosen_r, rejected_r, pc, pr, lc, False)


def _pair_result(scored: Scored | ScoredByKey, data: Encoded, micro: Micro, loss_cfg: Any, device: torch.device,
                 losses: Tensor, chosen_r: Tensor, rejected_r: Tensor, pc: Tensor, pr: Tensor, lc: Tensor,
                 quantiles: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """A pair loss's weighted sum and statistics, with Iterative RPO's NLL term when ``nll_weight`` is set."""
    weights = _weights(data, micro, device)
    nll_weight = getattr(loss_cfg, "nll_weight", 0.0)
    if nll_weight:  # Iterative RPO: + the chosen response's length-normalised NLL, per pair
        losses = losses - nll_weight * pc / lc.clamp(min=1).to(pc.dtype)
    # entry i of a quantile loss is the i-th quantile, not pair i: no pair's own weight fits it
    loss_weights = weights.mean().expand_as(weights) if quantiles else weights
    ones = torch.ones_like(weights)
    stats = _stats(weights, losses, ones, ones, chosen_r, rejected_r, pc, pr, chosen_r > rejected_r,
                   _tokens(scored, weights), loss_weights=loss_weights)
    return (losses * loss_weights).sum(), stats


def kto_step_kl(model: Any, data: Encoded, micros: tuple[Micro, ...], pad_id: int, device: torch.device,
                world_size: int = 1) -> float:
    """KTO's ``z0`` before the clamp: the mean mismatched log-ratio over the real rows of the whole step.

    Each rank scores its own micro-batches' mismatched (``kl``) rows without gradient, then one all-reduce
    of (sum, count) gives every rank the step's mean. Every rank runs one forward per micro-batch, filler
    ones included, so ZeRO-3's collective parameter gathers stay in step.
    """
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for micro in micros:
            pol = sequence_sums(run_model(model, data, micro.indices, ("kl",), pad_id, device))[0]
            ref = _ref(data, "ref_kl_logps", micro, device)
            real = torch.tensor(micro.real, device=device)
            total += torch.stack([(pol - ref)[real].double().sum().cpu(), real.double().sum().cpu()])
    if torch.distributed.is_initialized() and world_size > 1:
        total = total.to(device)
        torch.distributed.all_reduce(total)
        total = total.cpu()
    return float(total[0] / total[1]) if total[1] > 0 else 0.0


def kto_objective(model: Any, data: Encoded, micro: Micro, loss_cfg: Any, pad_id: int, device: torch.device,
                  kl_mean: float, share_prefix: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    """Summed weighted KTO loss of one micro-batch of unpaired rows (see ``data.kto_view``).

    ``kl_mean`` is the step's mismatched log-ratio mean from :func:`kto_step_kl` (clamped into ``z0`` by
    the loss), so a micro-batch of one row, or a weight-0 filler one, gets the same ``z0`` as the rest.
    """
    scored = run_model(model, data, micro.indices, ("completion",), pad_id, device, share_prefix)
    pol = sequence_sums(scored)[0]
    weights = _weights(data, micro, device)
    labels = column(data, "label", micro.indices).to(device) > 0.5
    ref = _ref(data, "ref_logps", micro, device)
    losses, rewards, z0 = kto_loss(pol, ref, labels, None, None, beta=loss_cfg.beta, kl_mean=kl_mean,
                                   **loss_cfg.resolved_params())
    # A row is "correct" when its implicit reward has the sign its label asks for.
    correct = torch.where(labels, rewards > 0, rewards < 0)
    stats = _stats(weights, losses, labels, ~labels, rewards, rewards, pol, pol, correct,
                   _tokens(scored, weights), z0)
    return (losses * weights).sum(), stats


def sft_objective(model: Any, data: Encoded, micro: Micro, pad_id: int, device: torch.device
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    """Summed negative log-likelihood of the completion tokens (the learner divides by the step's tokens).

    Statistics: ``loss`` is the summed NLL, ``chosen_logps`` the summed sequence log-probs.
    """
    scored = run_model(model, data, micro.indices, ("completion",), pad_id, device)
    logps, _ = sequence_sums(scored)
    weights = _weights(data, micro, device)
    nll = -(logps * weights).sum()
    ones, zeros = torch.ones_like(weights), torch.zeros_like(weights)
    stats = _stats(weights, -logps, ones, zeros, zeros, zeros, logps, zeros, zeros, _tokens(scored, weights))
    stats["loss"] = nll.detach().to(torch.float64)
    return nll, stats
