"""The batch plan of a round (who trains on what, in which order) and the collation of one micro-batch.

Every rank computes the *same* global plan from ``(seed, epoch)`` and takes its own slice, so sharding
needs no communication and is reproducible. Choices:

* **Length-grouped**, three ways (``train.length_grouping``). ``sorted``: the epoch's examples are sorted
  by padded length (ties broken randomly) and cut into consecutive micro-batches: least padding, but each
  batch holds one length class, and where length tracks content (a task whose answer length is its
  difficulty) batches become one kind of example and SGD suffers. ``megabatch``: the shuffled
  epoch is cut into windows of ``MEGABATCH`` micro-batches and sorted within each window, as HF's
  ``group_by_length`` does: most of the padding saving, batches drawn from a random sample.
  ``random`` (the recipes' default): random batches. The *order of optimizer steps* is shuffled from the
  seed in every mode.
* **A step is G = world_size x accumulation micro-batches**; micro-batch ``j`` of a step goes to rank
  ``j // accumulation``. The number of micro-batches is rounded up to a multiple of G and examples are
  spread evenly over them (sizes differ by at most one), so every rank runs the same number of
  forward/backward passes (ZeRO-3 needs that: parameter gathers are collective) and nothing is dropped.
  Only when a step has fewer examples than G, a micro-batch repeats one example with weight 0.
* Because the plan depends on G and not on how G splits into ranks x accumulation, ``W=1 x 2`` and
  ``W=2 x 1`` see identical steps; with the loss normalised by the step's example count (see
  ``objective.py``) they compute the same gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from selfplay.train.data import Encoded


@dataclass(frozen=True)
class Micro:
    """One micro-batch: example indices, and which of them count (False = weight-0 filler)."""

    indices: tuple[int, ...]
    real: tuple[bool, ...]

    @property
    def count(self) -> int:
        return sum(self.real)


@dataclass(frozen=True)
class Step:
    """One optimizer step of the global plan: G micro-batches and the number of real examples in them."""

    micros: tuple[Micro, ...]

    @property
    def count(self) -> int:
        return sum(m.count for m in self.micros)

    def for_rank(self, rank: int, accumulation: int) -> tuple[Micro, ...]:
        return self.micros[rank * accumulation : (rank + 1) * accumulation]


MEGABATCH = 64  # micro-batches per sorted window in ``megabatch`` grouping


def group_order(lengths: np.ndarray, rng: np.random.Generator, grouping: str, micro_batch_size: int) -> np.ndarray:
    """Example order for one epoch: sorted, sorted within shuffled windows, or just shuffled."""
    lengths = np.asarray(lengths)
    perm = rng.permutation(len(lengths))
    if grouping == "random":
        return perm
    if grouping == "sorted":
        return perm[np.argsort(lengths[perm], kind="stable")]
    if grouping != "megabatch":
        raise ValueError(f"length_grouping: unknown mode {grouping!r}; allowed: sorted, megabatch, random")
    size = MEGABATCH * micro_batch_size
    windows = [perm[i : i + size] for i in range(0, len(perm), size)]
    return np.concatenate([w[np.argsort(lengths[w], kind="stable")] for w in windows])


def plan_epoch(lengths: np.ndarray, micro_batch_size: int, world_size: int, accumulation: int,
               seed: int, epoch: int, grouping: str = "sorted") -> list[Step]:
    """The global list of optimizer steps for one epoch over examples of the given lengths."""
    n = len(lengths)
    if n == 0:
        return []
    g = world_size * accumulation
    rng = np.random.default_rng([seed, epoch])
    order = group_order(lengths, rng, grouping, micro_batch_size)
    n_micro = -(-n // micro_batch_size)
    n_micro = -(-n_micro // g) * g
    chunks = np.array_split(order, n_micro)
    micros = []
    for chunk in chunks:
        if len(chunk):
            micros.append(Micro(tuple(int(i) for i in chunk), (True,) * len(chunk)))
        else:  # fewer examples than G in total: a weight-0 stand-in keeps the collectives in step
            micros.append(Micro((int(order[0]),), (False,)))
    steps = [Step(tuple(micros[k : k + g])) for k in range(0, n_micro, g)]
    return [steps[i] for i in rng.permutation(len(steps))]


def plan_round(lengths: np.ndarray, micro_batch_size: int, world_size: int, accumulation: int,
               seed: int, epochs: int, grouping: str = "sorted") -> list[tuple[int, Step]]:
    """``(epoch, step)`` for every optimizer step of a round."""
    return [(e, s) for e in range(epochs) for s in plan_epoch(lengths, micro_batch_size, world_size,
                                                             accumulation, seed, e, grouping)]


def shard_indices(n: int, rank: int, world_size: int, batch_size: int) -> list[list[int]]:
    """Contiguous, length-unaware shards for inference passes; every rank gets the same batch count.

    Ranks with fewer examples get empty batches at the end (the caller still runs a forward for ZeRO-3).
    """
    per_rank = -(-n // world_size)
    mine = list(range(rank * per_rank, min(n, (rank + 1) * per_rank)))
    n_batches = max(1, -(-per_rank // batch_size))
    return [mine[k * batch_size : (k + 1) * batch_size] for k in range(n_batches)]


def collate(data: Encoded, indices: list[int] | tuple[int, ...], pad_id: int,
            keys: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ``[K*B, T]`` batch: completions ``keys`` (default: all) concatenated along the batch.

    Returns ``input_ids``, ``attention_mask`` (long) and ``loss_mask`` (bool, True on scored completion
    tokens: all of them, or a multi-turn completion's assistant tokens, ``Encoded.masks``), plus
    ``lengths`` (scored tokens per sequence, [K*B]). Sequence ``k*B + b`` is example ``b`` with completion
    ``keys[k]``.
    """
    keys = keys or tuple(data.completions)
    seqs, prompt_lens, scored = [], [], []
    for key in keys:
        for i in indices:
            p, c = data.prompts[i], data.completions[key][i]
            seqs.append(p + c)
            prompt_lens.append(len(p))
            scored.append(data.masks[key][i] if key in data.masks else None)
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), t), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), t), dtype=torch.bool)
    for r, (s, pl, m) in enumerate(zip(seqs, prompt_lens, scored)):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[r, : len(s)] = 1
        loss_mask[r, pl : len(s)] = True if m is None else torch.tensor(m, dtype=torch.bool)
    lengths = loss_mask.sum(dim=1)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask, "lengths": lengths}


def collate_shared(data: Encoded, indices: list[int] | tuple[int, ...], pad_id: int,
                   keys: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Prompts once ``[B, Tp]`` and their K completions ``[B*K, Tc]``, for a prefix-shared forward.

    Completion row ``b*K + k`` is example ``b`` with completion ``keys[k]`` (interleaved, the order of
    ``repeat_interleave`` on the prompt's KV cache). Everything is right-padded; ``prompt_lengths`` [B]
    locate each prompt's last token. ``score_mask`` [B*K, Tc] (bool) marks the completion tokens to score:
    ``completion_mask``, less a multi-turn completion's user turns (``Encoded.masks``).
    """
    keys = keys or tuple(data.completions)
    prompts = [data.prompts[i] for i in indices]
    completions = [data.completions[k][i] for i in indices for k in keys]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("an example has an empty prompt: nothing predicts its first completion token")
    prompt_ids, prompt_mask = _right_pad(prompts, pad_id)
    completion_ids, completion_mask = _right_pad(completions, pad_id)
    score_mask = completion_mask.bool()
    if any(k in data.masks for k in keys):
        flags = [data.masks[k][i] if k in data.masks else [1] * len(data.completions[k][i])
                 for i in indices for k in keys]
        score_mask = _right_pad([[int(f) for f in m] for m in flags], 0)[0].bool()
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "prompt_lengths": prompt_mask.sum(-1),
            "completion_ids": completion_ids, "completion_mask": completion_mask, "score_mask": score_mask}


def _right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def column(data: Encoded, name: str, indices: tuple[int, ...] | list[int], default: float | None = None
           ) -> torch.Tensor | None:
    """Float64 tensor of ``data.columns[name]`` at ``indices`` (``default``-filled when absent)."""
    values = data.columns.get(name)
    if values is None:
        return None if default is None else torch.full((len(indices),), default, dtype=torch.float64)
    return torch.as_tensor(values[list(indices)], dtype=torch.float64)
