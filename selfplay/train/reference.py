"""Reference log-probs, computed once per round and stored as table columns.

DPO-family losses only need the reference's *summed completion log-probs*, which do not change during a
round. So before training, the pairs are scored once (each rank scores a contiguous shard, no grad; the
shards are all-gathered) and written as ``ref_chosen_logps``/``ref_rejected_logps`` (KTO also
``ref_kl_chosen_logps``/``ref_kl_rejected_logps`` for its mismatched pairs). No reference model stays in
memory while training, and the stored table makes the reference auditable and a resumed round exact.

Which weights are the reference is the caller's decision: the weights the learner holds when
``compute_reference`` is called (the previous iteration's policy), or a model directory passed as
``model_path`` (e.g. the initial policy), loaded temporarily as a plain inference model on every rank.

Exception, ``tdpo``: its token-level KL needs the reference's full next-token distribution at every
completion position. That cannot be stored as a column (B x T x V), so for ``tdpo`` the learner keeps a
frozen copy of the reference model (``frozen_reference``) and computes its logits in the same training
step. Under ZeRO-3 that copy is a full, unsharded model on each rank (in the training dtype): TDPO
trades memory for exactness.

The columns carry table metadata (``selfplay.reference``: the length limits used and the reference model
directory, if not the learner's own weights). Training checks the limits, because log-probs computed
under other truncation limits would silently be wrong; TDPO uses the model entry to rebuild its frozen
reference in a restarted process.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load_file

from selfplay.train.batches import shard_indices
from selfplay.train.data import Encoded, scored_mask
from selfplay.train.engine import iter_full_params, model_from_state
from selfplay.train.objective import run_model, sequence_sums

META_KEY = b"selfplay.reference"


def score(model: Any, data: Encoded, keys: tuple[str, ...], pad_id: int, device: torch.device,
          batch_size: int, share_prefix: bool = True, split: bool = True) -> dict[str, np.ndarray]:
    """Summed completion log-probs of every example for each completion ``key``; all ranks get all.

    Collective: every rank runs the same number of forwards (ZeRO-3 gathers are collective), so ZeRO-3
    passes ``split=False`` and ``share_prefix`` decided for the whole table (``objective.shares_prefix``).
    """
    dist = torch.distributed
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    by_length = np.argsort(data.lengths(), kind="stable")  # similar lengths per batch: little padding
    local: dict[str, list[float]] = {k: [] for k in keys}
    was_training = getattr(model, "training", False)
    model.eval()
    with torch.no_grad():
        for batch_pos in shard_indices(len(data), rank, world, batch_size):
            idx = [int(by_length[p]) for p in batch_pos] or [0]  # an idle rank still runs a forward (ZeRO-3)
            scored = run_model(model, data, idx, keys, pad_id, device, share_prefix, split)
            sums = sequence_sums(scored)[0].float().cpu()
            if batch_pos:
                for j, key in enumerate(keys):
                    local[key].extend(sums[j * len(idx) : (j + 1) * len(idx)].tolist())
    if was_training:
        model.train()
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, local)
    else:
        gathered = [local]
    out = {}
    for key in keys:
        values = np.empty(len(data), dtype=np.float64)
        values[by_length] = [v for part in gathered for v in part[key]]  # shards are contiguous in by_length
        out[key] = values
    return out


Sequence = tuple[tuple[int, ...], tuple[int, ...]]
"""A (prompt token ids, completion token ids) pair: what a reference log-prob is a function of."""


def score_unique(model: Any, data: Encoded, keys: tuple[str, ...], pad_id: int, device: torch.device,
                 batch_size: int, share_prefix: bool = True, split: bool = True,
                 known: dict[Sequence, float] | None = None) -> dict[str, np.ndarray]:
    """:func:`score`, with each distinct (prompt, completion) scored once, its prompt once for all of them.

    Self-play pairs repeat sequences: SPIN's reference answer is the chosen side of every pair of its
    prompt, ``all_pairs`` puts each sample in n-1 pairs, KTO's mismatched completions are other pairs'
    sides. A log-prob is a function of the tokens alone, so the distinct completions of each prompt are
    scored together on one forward of the prompt (:func:`score_sequences`). Pairs with no repeats
    (``best_worst``) make the same batches as :func:`score`. Sequences in ``known`` (scored earlier, by the
    same weights: :meth:`Learner.prescore`) are taken from it. Collective under ZeRO-3, like :func:`score`.
    """
    if any(key in data.masks for key in keys):  # multi-turn: the sums depend on which tokens are scored too
        return score(model, data, keys, pad_id, device, batch_size, share_prefix, split)
    known = known or {}
    seqs = {key: [(tuple(p), tuple(c)) for p, c in zip(data.prompts, data.completions[key])] for key in keys}
    todo = [seq for i in range(len(data)) for key in keys if (seq := seqs[key][i]) not in known]
    value = {**known, **score_sequences(model, todo, pad_id, device, batch_size * len(keys), share_prefix, split)}
    return {key: np.asarray([value[seq] for seq in seqs[key]], dtype=np.float64) for key in keys}


def score_sequences(model: Any, sequences: list[Sequence], pad_id: int, device: torch.device,
                    completions_per_batch: int, share_prefix: bool = True, split: bool = True
                    ) -> dict[Sequence, float]:
    """Summed completion log-probs of the distinct ``sequences``: each prompt runs once for all of its
    distinct completions, as one example with ``m`` completions; examples are grouped by ``m``, and a
    batch holds about ``completions_per_batch`` completions. The result depends on ``sequences`` (their
    order included) and nothing else, so a group scored early and scored again gives the same numbers."""
    by_prompt: dict[tuple[int, ...], dict[tuple[int, ...], None]] = {}
    for prompt, completion in sequences:
        by_prompt.setdefault(prompt, {})[completion] = None  # an ordered set: first seen, first slot
    by_count: dict[int, list[tuple[int, ...]]] = {}
    for prompt, completions in by_prompt.items():
        by_count.setdefault(len(completions), []).append(prompt)
    value: dict[Sequence, float] = {}
    for m in sorted(by_count):
        prompts = by_count[m]
        names = tuple(f"c{j}" for j in range(m))
        slots = [list(by_prompt[p]) for p in prompts]
        group = Encoded([list(p) for p in prompts], {n: [list(cs[j]) for cs in slots] for j, n in enumerate(names)},
                        np.arange(len(prompts), dtype=np.int64))
        got = score(model, group, names, pad_id, device, max(1, completions_per_batch // m), share_prefix, split)
        for j, n in enumerate(names):
            value.update({(p, cs[j]): float(v) for p, cs, v in zip(prompts, slots, got[n])})
    return value


def kto_scoring_view(pairs: Encoded, partner: np.ndarray) -> Encoded:
    """Pairs with two more completions: the partner pair's chosen/rejected after this pair's prompt."""
    comps = dict(pairs.completions)
    comps["kl_chosen"] = [pairs.completions["chosen"][j] for j in partner]
    comps["kl_rejected"] = [pairs.completions["rejected"][j] for j in partner]
    masks = dict(pairs.masks)
    if masks:
        masks.update({f"kl_{k}": [scored_mask(pairs, k, int(j)) for j in partner] for k in ("chosen", "rejected")})
    return Encoded(pairs.prompts, comps, pairs.rows, pairs.columns, pairs.stats, masks)


def with_columns(table: pa.Table, rows: np.ndarray, values: dict[str, np.ndarray], meta: dict) -> pa.Table:
    """``table`` with float64 columns ``values`` (null on rows not in ``rows``) and the reference metadata."""
    for name, vals in values.items():
        full = np.full(table.num_rows, np.nan)
        full[rows] = vals
        mask = np.ones(table.num_rows, dtype=bool)
        mask[rows] = False
        col = pa.array(full, type=pa.float64(), mask=mask)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, col)
        else:
            table = table.append_column(name, col)
    metadata = dict(table.schema.metadata or {})
    metadata[META_KEY] = json.dumps(meta, sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)


def reference_meta(cfg: Any) -> dict:
    return {"max_prompt_length": cfg.max_prompt_length, "max_completion_length": cfg.max_completion_length,
            "truncation": cfg.truncation, "segment_turns": getattr(getattr(cfg, "loss", None), "segment_turns", None)}


def require_columns(table: pa.Table, names: tuple[str, ...], cfg: Any) -> None:
    """Raise unless ``table`` has reference columns ``names`` computed under ``cfg``'s length limits."""
    missing = [c for c in names if c not in table.column_names]
    if missing:
        raise ValueError(f"pairs lack reference column(s) {missing}: call compute_reference(pairs) first "
                         f"(loss {cfg.loss.type!r} needs them)")
    check_meta(table, cfg)


def stored_meta(table: pa.Table) -> dict:
    """The metadata ``compute_reference`` stored on the table ({} when the columns came from elsewhere)."""
    raw = (table.schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw is not None else {}


def check_meta(table: pa.Table, cfg: Any) -> None:
    """Raise if the table's reference columns were computed under other length limits than ``cfg``'s."""
    meta = stored_meta(table)
    if not meta:
        return  # columns from elsewhere (e.g. a dataset's own reference log-probs): trusted as given
    wanted = reference_meta(cfg)
    stored = {k: meta.get(k) for k in wanted}
    if stored != wanted:
        raise ValueError(f"reference log-probs were computed with {stored}, but this round uses {wanted}; "
                         "recompute them with compute_reference under the round's TrainConfig")


def load_plain_model(path: str, dtype: torch.dtype, device: torch.device) -> Any:
    """An inference-only HF model from a directory (a reference that is not the learner's weights)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.to(device).eval().requires_grad_(False)


def frozen_reference(engine: Any, config: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """A frozen full copy of the engine's current weights (every rank; collective under ZeRO-3)."""
    return _frozen(dict(iter_full_params(engine, dtype=dtype, to_all=True)), config, dtype, device)


def load_frozen(path: str, config: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """The frozen reference saved with a checkpoint (``reference.safetensors``)."""
    return _frozen(load_file(path), config, dtype, device)


def _frozen(state: dict[str, torch.Tensor], config: Any, dtype: torch.dtype, device: torch.device) -> Any:
    model = model_from_state(config, state, dtype, what="reference copy's weights")
    return model.to(device).eval().requires_grad_(False)
