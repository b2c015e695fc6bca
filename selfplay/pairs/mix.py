"""SPIN's option of training on some of the previous iteration's pairs as well as this round's.

``mix_previous`` adds ``round(fraction * n)`` rows drawn (seeded, without replacement) from the
*previous round's own* pairs, ``n`` of them, after this round's pairs. The previous ``pairs.parquet``
also holds what was mixed into it; those rows (an older ``iteration``) are left out, so the mixed data
does not accumulate: SPIN's iteration t trains on t-1's and t's pairs (50k + 50k), never 50k x (t + 1).
The previous round's own rows are the ones with the largest ``iteration`` in its table. The drawn rows
keep their own ``pair_id``, ``iteration`` and ``policy_version``, so the learner and the stats can tell
them apart; a previous row whose ``pair_id`` is already present is skipped (mixing twice never
duplicates a pair).
"""

from __future__ import annotations

import random

import pyarrow as pa

from selfplay.records import PAIRS_SCHEMA


def mix_previous(pairs: pa.Table, previous_pairs: pa.Table | None, fraction: float,
                 seed: int = 0) -> pa.Table:
    """This round's ``pairs`` followed by a seeded ``fraction`` of ``previous_pairs``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"pairing.mix_previous: fraction must be in [0, 1], got {fraction}")
    current = _conform(pairs)
    if previous_pairs is None or previous_pairs.num_rows == 0 or fraction == 0.0:
        return current
    previous = own_rows(_conform(previous_pairs))
    k = round(fraction * previous.num_rows)
    picked = sorted(random.Random(seed).sample(range(previous.num_rows), k))
    present = set(current.column("pair_id").to_pylist())
    ids = previous.column("pair_id").to_pylist()
    picked = [i for i in picked if ids[i] not in present]
    return pa.concat_tables([current, previous.take(picked)])


def own_rows(table: pa.Table) -> pa.Table:
    """The rows a round built itself: those of the table's latest ``iteration`` (mixed-in rows are older)."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table
    latest = pc.max(table.column("iteration")).as_py()
    if latest is None:
        return table
    return table.filter(pc.equal(table.column("iteration"), latest))


def _conform(table: pa.Table) -> pa.Table:
    missing = [f.name for f in PAIRS_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"not a pairs table: missing column(s) {missing}")
    return table.select(PAIRS_SCHEMA.names).cast(PAIRS_SCHEMA)
