"""Record tables the driver writes (the column contract every stage and user tool reads).

generations: one row per sample (prompt_id, prompt, reference, sample_index, response,
response_token_ids, finish_reason, policy_version, iteration). Chat-message prompts are stored as
their JSON encoding so one string column serves both prompt kinds.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

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


def encode_prompt(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def generations_table(examples: list, completions: list[list], iteration: int, policy_version: int) -> pa.Table:
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
