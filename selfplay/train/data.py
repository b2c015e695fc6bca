"""Turning a round's pairs table (or SFT examples) into token ids the learner can batch.

Input is a pyarrow Table (or a parquet path, or a list of dicts) with columns ``prompt`` (plain text or
a list of chat messages), ``chosen``, ``rejected`` and optionally ``offset`` (ODPO margin), ``weight``
(per-pair loss multiplier, default 1) and ``pair_id``. Choices:

* Prompts get exactly the token ids the generator conditioned on (``selfplay.generate.types.encode_prompts``):
  a chat-message prompt (a list, or its JSON encoding as the driver's tables store it) is rendered with
  the chat template (``add_generation_prompt=True``) and encoded without adding special tokens; a plain
  string is encoded the tokenizer's usual way. A completion is the sampled token ids when the table has
  them (``chosen_token_ids``/``rejected_token_ids``: exact, an ending eos included only if the sample
  ended with it), else the text followed by eos (e.g. a dataset's reference answer). Only completion
  tokens are scored.
* Prompt and completion are encoded separately and concatenated, so the prompt/completion boundary is
  exact even for BPE (the generator also continues from the prompt's ids).
* Over-long examples follow ``truncation``: ``truncate`` keeps the *last* ``max_prompt_length`` prompt
  tokens (the question is at the end) and the *first* ``max_completion_length`` completion tokens;
  with a total ``max_length`` as well, the prompt is cut first and the completions then keep what is
  left (``max_length - prompt``), the DPO authors' order;
  ``drop`` removes the example. Both counts are reported, never silent.
* Rows keep their index into the input table (``rows``), so per-row results (reference log-probs) can be
  written back as table columns, with nulls for dropped rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from selfplay.records import KTO_REF_COLUMNS, REF_COLUMNS, decode_prompt

SCORE_COLUMNS = ("chosen_score", "rejected_score")  # the judge's scores: SPPO's win probabilities


@dataclass
class Encoded:
    """Token ids of N kept examples: one prompt each and one or more named completions (``chosen``...)."""

    prompts: list[list[int]]
    completions: dict[str, list[list[int]]]
    rows: np.ndarray
    """Index of each kept example in the input table, int64 [N]."""
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-example float columns aligned with ``rows`` (weight, offset, reference log-probs)."""
    stats: dict[str, int] = field(default_factory=dict)
    """``examples``, ``kept``, ``dropped``, ``truncated`` (counts of input rows)."""

    def __len__(self) -> int:
        return len(self.prompts)

    def lengths(self) -> np.ndarray:
        """Padded length of each example in a joint forward: prompt + its longest completion, [N]."""
        longest = np.zeros(len(self), dtype=np.int64)
        for seqs in self.completions.values():
            longest = np.maximum(longest, [len(s) for s in seqs])
        return np.asarray([len(p) for p in self.prompts], dtype=np.int64) + longest


def read_table(data: pa.Table | str | Path | list[dict[str, Any]]) -> pa.Table:
    """Accept a pyarrow Table, a parquet file path, or a list of row dicts."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, str | Path):
        import pyarrow.parquet as pq

        return pq.read_table(data)
    if isinstance(data, list):
        return pa.Table.from_pylist(data)
    raise TypeError(f"expected a pyarrow Table, a parquet path or a list of dicts, got {type(data).__name__}")


class PromptEncoder:
    """Encodes prompts (cached: self-play pairs share prompts) and completions for one tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError("the tokenizer has no eos token; a completion must end with eos")
        self._cache: dict[str, list[int]] = {}

    def prompt(self, prompt: str | list[dict[str, str]]) -> list[int]:
        from selfplay.generate.types import encode_prompts

        key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
        ids = self._cache.get(key)
        if ids is None:
            value = decode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
            ids = self._cache[key] = encode_prompts(self.tok, [value])[0]
        return ids

    def completion(self, text: str, token_ids: list[int] | None = None) -> list[int]:
        if token_ids is not None:
            return list(token_ids)
        return [*self.tok(text, add_special_tokens=False)["input_ids"], self.eos]


def encode(
    table: pa.Table,
    tokenizer: Any,
    completion_columns: tuple[str, ...],
    *,
    max_prompt_length: int,
    max_completion_length: int,
    truncation: str = "truncate",
    max_length: int | None = None,
    float_columns: tuple[str, ...] = ("weight", "offset", *REF_COLUMNS, *KTO_REF_COLUMNS, *SCORE_COLUMNS),
) -> Encoded:
    """Tokenise ``prompt`` and each of ``completion_columns`` of ``table`` with the length policy."""
    if truncation not in ("truncate", "drop"):
        raise ValueError(f"truncation must be 'truncate' or 'drop', got {truncation!r}")
    missing = [c for c in ("prompt", *completion_columns) if c not in table.column_names]
    if missing:
        raise ValueError(f"table is missing column(s) {missing}; it has {table.column_names}")
    enc = PromptEncoder(tokenizer)
    prompts_col = table.column("prompt").to_pylist()
    texts = {c: table.column(c).to_pylist() for c in completion_columns}
    n = table.num_rows
    ids = {c: table.column(f"{c}_token_ids").to_pylist() if f"{c}_token_ids" in table.column_names else [None] * n
           for c in completion_columns}
    prompts: list[list[int]] = []
    completions: dict[str, list[list[int]]] = {c: [] for c in completion_columns}
    rows: list[int] = []
    dropped = truncated = 0
    for i, prompt in enumerate(prompts_col):
        p = enc.prompt(prompt)
        cs = {c: enc.completion(texts[c][i], ids[c][i]) for c in completion_columns}
        longest = max((len(s) for s in cs.values()), default=0)
        too_long = (len(p) > max_prompt_length or longest > max_completion_length
                    or (max_length is not None and len(p) + longest > max_length))
        if too_long and truncation == "drop":
            dropped += 1
            continue
        if too_long:
            truncated += 1
            p = p[len(p) - max_prompt_length :] if len(p) > max_prompt_length else p
            room = max_completion_length if max_length is None else min(max_completion_length, max_length - len(p))
            cs = {c: s[:room] for c, s in cs.items()}
        prompts.append(p)
        for c, s in cs.items():
            completions[c].append(s)
        rows.append(i)
    idx = np.asarray(rows, dtype=np.int64)
    columns = {}
    for name in float_columns:
        if name in table.column_names:
            values = table.column(name).to_numpy(zero_copy_only=False)
            columns[name] = np.asarray(values, dtype=np.float64)[idx]
    stats = {"examples": table.num_rows, "kept": len(rows), "dropped": dropped, "truncated": truncated}
    return Encoded(prompts, completions, idx, columns, stats)


def encode_pairs(table: pa.Table, tokenizer: Any, cfg: Any, completions: tuple[str, ...] = ("chosen", "rejected")
                 ) -> Encoded:
    """Pairs (``chosen``/``rejected``, or other ``completions`` columns) with the limits of a ``TrainConfig``."""
    return encode(
        table,
        tokenizer,
        completions,
        max_prompt_length=cfg.max_prompt_length,
        max_completion_length=cfg.max_completion_length,
        truncation=cfg.truncation,
        max_length=getattr(cfg, "max_length", None),
    )


SFT_TARGET_COLUMNS = ("reference", "completion", "response", "chosen")


def encode_sft(table: pa.Table, tokenizer: Any, *, max_prompt_length: int, max_completion_length: int,
               truncation: str = "truncate") -> Encoded:
    """SFT examples: ``prompt`` + the first present of ``reference``/``completion``/``response``/``chosen``."""
    target = next((c for c in SFT_TARGET_COLUMNS if c in table.column_names), None)
    if target is None:
        raise ValueError(f"SFT examples need a `prompt` and one of {SFT_TARGET_COLUMNS}; got {table.column_names}")
    enc = encode(table, tokenizer, (target,), max_prompt_length=max_prompt_length,
                 max_completion_length=max_completion_length, truncation=truncation, float_columns=("weight",))
    enc.completions = {"completion": enc.completions[target]}
    return enc


def kl_partners(n: int, seed: int) -> np.ndarray:
    """A seeded derangement of ``range(n)`` (n >= 2): pair i borrows the completions of pair ``partner[i]``.

    KTO estimates the KL term from mismatched (prompt, completion) pairs, as in the KTO paper. Fixing the
    mismatch per dataset (rather than per batch) lets the reference log-probs of those mismatched pairs
    be computed once, with the other reference columns.
    """
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    order = np.random.default_rng([seed, 0x6B7]).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def kto_view(pairs: Encoded, seed: int) -> Encoded:
    """Unpaired KTO rows from pairs: each pair gives a desirable (chosen) and an undesirable (rejected) row.

    Row ``2i`` is (prompt_i, chosen_i, label 1), row ``2i+1`` is (prompt_i, rejected_i, label 0); both carry
    a KL completion borrowed from pair ``kl_partners[i]`` (its chosen resp. rejected). Columns ``label``,
    ``weight`` and, when present, ``ref_logps`` / ``ref_kl_logps`` are interleaved the same way.
    """
    n = len(pairs)
    partner = kl_partners(n, seed)
    chosen, rejected = pairs.completions["chosen"], pairs.completions["rejected"]
    prompts, comp, kl = [], [], []
    for i in range(n):
        for seqs in (chosen, rejected):
            prompts.append(pairs.prompts[i])
            comp.append(seqs[i])
            kl.append(seqs[partner[i]])
    cols = {"label": np.tile([1.0, 0.0], n), "weight": np.repeat(pairs.columns.get("weight", np.ones(n)), 2)}
    if all(c in pairs.columns for c in REF_COLUMNS):
        cols["ref_logps"] = _interleave(pairs.columns[REF_COLUMNS[0]], pairs.columns[REF_COLUMNS[1]])
    if all(c in pairs.columns for c in KTO_REF_COLUMNS):
        cols["ref_kl_logps"] = _interleave(pairs.columns[KTO_REF_COLUMNS[0]], pairs.columns[KTO_REF_COLUMNS[1]])
    return Encoded(prompts, {"completion": comp, "kl": kl}, np.repeat(pairs.rows, 2), cols, dict(pairs.stats))


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(2 * len(a), dtype=np.float64)
    out[0::2], out[1::2] = a, b
    return out


def table_fingerprint(table: pa.Table) -> str:
    """A content hash of the text columns, to recognise the same round's data when resuming."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(table.column_names):
        if name.startswith("ref_"):
            continue
        h.update(name.encode())
        h.update(json.dumps(table.column(name).to_pylist(), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
