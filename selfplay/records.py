"""The artifact tables and the prompt encoding: the one column contract every stage and user tool reads.

Each iteration directory holds these tables (parquet); this module owns their schemas, so a column is
renamed in one place:

* ``generations`` (:data:`GENERATIONS_SCHEMA`): one row per sample (prompt_id, prompt, reference,
  sample_index, response, response_token_ids, finish_reason, policy_version, iteration).
* ``judgments``: the generations columns plus :data:`JUDGMENT_COLUMNS` (``score``, null when the judge
  could not decide, and ``judge``, its name).
* ``pairs`` (:data:`PAIRS_SCHEMA`): one row per (chosen, rejected) pair. ``chosen_token_ids`` is null
  for a reference answer (SPIN), whose tokens the learner computes itself; ``pair_id`` is
  ``"{iteration}:{prompt_id}:{chosen}:{rejected}"`` with sample indices (``ref`` for the reference), so
  the same pair keeps its id when an iteration is rebuilt or mixed into a later one. ``offset`` is
  ODPO's per-pair offset, ``log(chosen_score - rejected_score)`` from the judge's raw scores (see
  ``selfplay.pairs.build.odpo_offset``); null where the pair has no scores (offline pairs). Rows of the
  ``best`` strategy (rejection sampling) have no rejected side: its columns and ``margin`` are null and
  the id's last part is empty.
* ``reference``: the pairs columns plus :data:`REF_COLUMNS` (and :data:`KTO_REF_COLUMNS` for KTO), the
  reference model's summed log-probs of each side.
* generation shards (:data:`SHARD_SCHEMA`): one row per completion of one shard of a generate call.

Prompts: a prompt is plain text or a list of chat messages (:data:`Prompt`). Tables store one string
column for both kinds: chat messages as their JSON encoding (:func:`encode_prompt`), decoded back into
messages by :func:`decode_prompt` wherever a chat template has to render them (judges, the trainer).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

Prompt = str | list[dict[str, Any]]

GENERATIONS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("reference", pa.string()),
    ("sample_index", pa.int32()),
    ("response", pa.string()),
    ("response_token_ids", pa.list_(pa.int32())),
    ("finish_reason", pa.string()),
    ("policy_version", pa.int32()),
    ("iteration", pa.int32()),
])

JUDGMENT_COLUMNS = (pa.field("score", pa.float64()), pa.field("judge", pa.string()))

PAIRS_SCHEMA = pa.schema([
    ("pair_id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("chosen", pa.string()),
    ("rejected", pa.string()),
    ("chosen_token_ids", pa.list_(pa.int64())),
    ("rejected_token_ids", pa.list_(pa.int64())),
    ("chosen_score", pa.float64()),
    ("rejected_score", pa.float64()),
    ("margin", pa.float64()),
    ("judge", pa.string()),
    ("policy_version", pa.int64()),
    ("iteration", pa.int64()),
    ("offset", pa.float64()),
])

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
KTO_REF_COLUMNS = ("ref_kl_chosen_logps", "ref_kl_rejected_logps")

SHARD_SCHEMA = pa.schema([
    ("prompt_index", pa.int64()),
    ("sample_index", pa.int32()),
    ("token_ids", pa.list_(pa.int32())),
    ("text", pa.string()),
    ("finish_reason", pa.string()),
    ("logprobs", pa.list_(pa.float64())),  # float64: a reused shard reads back exactly what was generated
    ("policy_version", pa.int32()),
])


def encode_prompt(prompt: Prompt) -> str:
    """A prompt as a table stores it: text as is, chat messages as their JSON encoding."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def decode_prompt(prompt: str) -> Prompt:
    """A table's prompt string back to a chat-message list when it is a JSON-encoded one, else as is."""
    if not prompt.startswith("["):
        return prompt
    try:
        value = json.loads(prompt)
    except ValueError:
        return prompt
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value
    ):
        return value
    return prompt


def generations_table(examples: list, completions: list[list], iteration: int, policy_version: int) -> pa.Table:
    """The generations table of one generate call: ``completions[i]`` are the samples of ``examples[i]``."""
    if len(examples) != len(completions):
        raise ValueError(f"{len(completions)} completion groups for {len(examples)} prompts")
    rows = []
    for ex, group in zip(examples, completions):
        for j, c in enumerate(group):
            rows.append({
                "prompt_id": ex.id,
                "prompt": encode_prompt(ex.prompt),
                "reference": ex.reference,
                "sample_index": j,
                "response": c.text,
                "response_token_ids": list(c.token_ids),
                "finish_reason": c.finish_reason,
                "policy_version": policy_version,
                "iteration": iteration,
            })
    return pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA)


SEQUENCES_SCHEMA = pa.schema([
    pa.field("prompt", pa.string()),
    pa.field("completion", pa.string()),
    pa.field("completion_token_ids", pa.list_(pa.int32())),
])


def reference_sequences(generations: pa.Table, with_reference: bool) -> pa.Table:
    """The (prompt, completion) sequences a reference pass may need from these generations: per prompt,
    in order, its reference answer (``with_reference``: SPIN's chosen side; tokenised from its text, as
    in the pairs) and then every sample (with its token ids)."""
    rows: list[dict] = []
    seen: set[str] = set()
    for g in generations.select(["prompt_id", "prompt", "reference", "response", "response_token_ids"]).to_pylist():
        if with_reference and g["prompt_id"] not in seen and g["reference"] is not None:
            rows.append({"prompt": g["prompt"], "completion": g["reference"], "completion_token_ids": None})
        seen.add(g["prompt_id"])
        rows.append({"prompt": g["prompt"], "completion": g["response"],
                     "completion_token_ids": g["response_token_ids"]})
    return pa.Table.from_pylist(rows, schema=SEQUENCES_SCHEMA)


PRESCORED_KEY = b"selfplay.prescored"  # "taken/groups" on compute_reference's result, see pop_prescored


def pop_prescored(table: pa.Table) -> tuple[pa.Table, str | None]:
    """``table`` without the count ``compute_reference`` puts on it when given groups ("3/4": groups
    taken from what ``Learner.prescore`` held / groups), and that count, or None."""
    metadata = dict(table.schema.metadata or {})
    count = metadata.pop(PRESCORED_KEY, None)
    return table.replace_schema_metadata(metadata), None if count is None else count.decode()
