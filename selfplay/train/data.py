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
* **Multi-turn completions** (SDPO's sessions): a completion stored as the JSON encoding of its messages
  (``selfplay.tasks.formats``; never one with sampled token ids) continues the prompt with assistant
  turns and the user turns between them. It is rendered with the chat template turn by turn: each
  message's tokens are what the template adds for it (the text rendered with it minus the text rendered
  before it, a user turn taking the next generation prompt along), encoded separately, so every turn
  boundary is exact. An assistant turn's tokens are scored up to and including its end-of-turn token
  (eos, what the generator stops on; template glue after it is context), a user turn's are context
  (``Encoded.masks``). ``segment_turns`` keeps the first K assistant turns (SDPO's segment) and cuts the
  session after the K-th; unset, after the last assistant turn (turns after it change no scored token).
  A template that rewrites earlier turns when a later one is added (e.g. one that drops past reasoning)
  cannot be cut this way and is refused, naming the row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selfplay.generate.types import encode_prompts
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
    masks: dict[str, list[list[bool]]] = field(default_factory=dict)
    """Per completion key holding a multi-turn row: per example, which completion tokens are scored (the
    assistant tokens of the segment). A key absent here scores every completion token."""

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

    def side(self, prompt: str | list[dict[str, str]], text: str, token_ids: list[int] | None,
             segment_turns: int | None, where: str) -> tuple[list[int], list[bool] | None]:
        """One completion's ids, and its scored mask when it is multi-turn (None: every token is scored)."""
        turns = _turns(text) if token_ids is None else None
        if turns is not None:
            return self.session(prompt, turns, segment_turns, where)
        if segment_turns is not None and segment_turns > 1:
            raise ValueError(f"{where}: a segment longer than the session: train.loss.segment_turns={segment_turns}, "
                             "but the completion is one assistant reply")
        return self.completion(text, token_ids), None

    def session(self, prompt: str | list[dict[str, str]], turns: list[dict[str, str]], segment_turns: int | None,
                where: str) -> tuple[list[int], list[bool]]:
        """Token ids of a multi-turn continuation of ``prompt`` and which of them are scored (see the module
        docstring); ``where`` names the row in errors."""
        if not getattr(self.tok, "chat_template", None):
            raise ValueError(f"{where}: a multi-turn completion needs a tokenizer with a chat template")
        history = decode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        history = [{"role": "user", "content": history}] if isinstance(history, str) else history
        ends = [j for j, m in enumerate(turns) if m["role"] == "assistant"]
        if not ends or turns[0]["role"] != "assistant":
            raise ValueError(f"{where}: roles out of order: a multi-turn completion starts with an assistant turn "
                             f"(got roles {[m['role'] for m in turns]})")
        wanted = len(ends) if segment_turns is None else segment_turns
        if wanted > len(ends):
            raise ValueError(f"{where}: a segment longer than the session: train.loss.segment_turns={wanted}, but "
                             f"the completion has {len(ends)} assistant turn(s)")
        kept = turns[: ends[wanted - 1] + 1]
        render = lambda msgs, gen: self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        before = render(history, True)
        ids: list[int] = []
        mask: list[bool] = []
        for k, msg in enumerate(kept):
            after = render([*history, *kept[: k + 1]], k + 1 < len(kept) and kept[k + 1]["role"] == "assistant")
            if not after.startswith(before):
                raise ValueError(f"{where}: the chat template rewrites the text before turn {k} of the completion "
                                 "when it is added, so the turn's tokens cannot be located")
            piece = list(self.tok(after[len(before):], add_special_tokens=False)["input_ids"])
            scored = (piece.index(self.eos) + 1 if self.eos in piece else len(piece)) if msg["role"] == "assistant" \
                else 0
            ids += piece
            mask += [True] * scored + [False] * (len(piece) - scored)
            before = after
        return ids, mask


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
    segment_turns: int | None = None,
) -> Encoded:
    """Tokenise ``prompt`` and each of ``completion_columns`` of ``table`` with the length policy
    (multi-turn completions: their assistant turns scored, up to ``segment_turns`` of them)."""
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
    pair_ids = table.column("pair_id").to_pylist() if "pair_id" in table.column_names else None
    prompts: list[list[int]] = []
    completions: dict[str, list[list[int]]] = {c: [] for c in completion_columns}
    masks: dict[str, list[list[bool] | None]] = {c: [] for c in completion_columns}
    rows: list[int] = []
    dropped = truncated = 0
    for i, prompt in enumerate(prompts_col):
        p = enc.prompt(prompt)
        where = f"pairs row {i}" + (f" (pair_id {pair_ids[i]!r})" if pair_ids else "")
        sides = {c: enc.side(prompt, texts[c][i], ids[c][i], segment_turns, f"{where}, column {c!r}")
                 for c in completion_columns}
        cs, ms = {c: v[0] for c, v in sides.items()}, {c: v[1] for c, v in sides.items()}
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
            ms = {c: None if m is None else m[:room] for c, m in ms.items()}
        prompts.append(p)
        for c, s in cs.items():
            completions[c].append(s)
            masks[c].append(ms[c])
        rows.append(i)
    idx = np.asarray(rows, dtype=np.int64)
    stats = {"examples": table.num_rows, "kept": len(rows), "dropped": dropped, "truncated": truncated}
    scored = {c: [[True] * len(s) if m is None else m for s, m in zip(completions[c], masks[c])]
              for c in completion_columns if any(m is not None for m in masks[c])}
    return Encoded(prompts, completions, idx, _float_columns(table, float_columns, idx), stats, scored)


def _float_columns(table: pa.Table, names: tuple[str, ...], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The present ``names`` of ``table`` as float64 arrays at the kept rows ``idx``."""
    return {name: np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)[idx]
            for name in names if name in table.column_names}


def _turns(text: str | None) -> list[dict[str, str]] | None:
    """A multi-turn completion's messages when ``text`` is their JSON encoding (as tables store them), else None."""
    if not isinstance(text, str):
        return None
    value = decode_prompt(text)
    return value if isinstance(value, list) else None


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
        segment_turns=getattr(getattr(cfg, "loss", None), "segment_turns", None),
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
    enc.masks = {"completion": enc.masks[target]} if target in enc.masks else {}
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
    prompts, comp, kl, comp_mask, kl_mask = [], [], [], [], []
    for i in range(n):
        for key, seqs in (("chosen", chosen), ("rejected", rejected)):
            prompts.append(pairs.prompts[i])
            comp.append(seqs[i])
            kl.append(seqs[partner[i]])
            comp_mask.append(scored_mask(pairs, key, i))
            kl_mask.append(scored_mask(pairs, key, int(partner[i])))
    cols = {"label": np.tile([1.0, 0.0], n), "weight": np.repeat(pairs.columns.get("weight", np.ones(n)), 2)}
    if all(c in pairs.columns for c in REF_COLUMNS):
        cols["ref_logps"] = _interleave(pairs.columns[REF_COLUMNS[0]], pairs.columns[REF_COLUMNS[1]])
    if all(c in pairs.columns for c in KTO_REF_COLUMNS):
        cols["ref_kl_logps"] = _interleave(pairs.columns[KTO_REF_COLUMNS[0]], pairs.columns[KTO_REF_COLUMNS[1]])
    masks = {"completion": comp_mask, "kl": kl_mask} if pairs.masks else {}
    return Encoded(prompts, {"completion": comp, "kl": kl}, np.repeat(pairs.rows, 2), cols, dict(pairs.stats), masks)


def scored_mask(data: Encoded, key: str, i: int) -> list[bool]:
    """Which tokens of example ``i``'s completion ``key`` are scored (all, unless it is multi-turn)."""
    masks = data.masks.get(key)
    return [True] * len(data.completions[key][i]) if masks is None else masks[i]


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(2 * len(a), dtype=np.float64)
    out[0::2], out[1::2] = a, b
    return out


def table_fingerprint(table: pa.Table) -> str:
    """A content hash of the text columns, to recognise the same round's data when resuming."""
    h = hashlib.sha256()
    for name in sorted(table.column_names):
        if name.startswith("ref_"):
            continue
        h.update(name.encode())
        h.update(json.dumps(table.column(name).to_pylist(), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
