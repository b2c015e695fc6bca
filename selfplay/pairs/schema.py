"""The pairs table's columns (one row per (chosen, rejected) pair), shared by the builder and the mixer.

``chosen_token_ids`` is null for a reference answer (SPIN), whose tokens the learner computes itself;
``pair_id`` is ``"{iteration}:{prompt_id}:{chosen}:{rejected}"`` with sample indices (``ref`` for the
reference), so the same pair keeps its id when an iteration is rebuilt or mixed into a later one.
``offset`` is ODPO's per-pair offset, ``log(chosen_score - rejected_score)`` from the judge's raw scores
(see ``selfplay.pairs.build.odpo_offset``); null where the pair has no scores (offline pairs).
Rows of the ``best`` strategy (rejection sampling) have no rejected side: its columns and ``margin``
are null and the id's last part is empty.
"""

from __future__ import annotations

import pyarrow as pa

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
