"""mix_previous: a seeded fraction of last round's pairs appended, never duplicating a pair id."""

from __future__ import annotations

import pyarrow as pa
import pytest

from selfplay.pairs import PAIRS_SCHEMA, mix_previous


def pairs(iteration: int, n: int, start: int = 0) -> pa.Table:
    rows = [{
        "pair_id": f"{iteration}:p{k}:0:1", "prompt_id": f"p{k}", "prompt": f"Q{k}", "chosen": "c",
        "rejected": "r", "chosen_token_ids": [1], "rejected_token_ids": [2], "chosen_score": 1.0,
        "rejected_score": 0.0, "margin": 1.0, "judge": "verifier", "policy_version": iteration,
        "iteration": iteration,
    } for k in range(start, start + n)]
    return pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA)


def test_fraction_of_previous_is_appended_seeded():
    current, previous = pairs(1, 2), pairs(0, 10)
    mixed = mix_previous(current, previous, 0.5, seed=3)
    assert mixed.num_rows == 2 + 5 and mixed.schema == PAIRS_SCHEMA
    assert mixed.column("iteration").to_pylist() == [1, 1, 0, 0, 0, 0, 0]
    assert mixed.slice(0, 2).equals(current)
    assert mix_previous(current, previous, 0.5, seed=3).equals(mixed)
    subsets = {tuple(mix_previous(current, previous, 0.5, seed=s).column("pair_id").to_pylist()[2:])
               for s in range(5)}
    assert len(subsets) > 1  # the seed changes which pairs are drawn
    assert mix_previous(current, previous, 1.0).num_rows == 12
    assert mix_previous(current, previous, 0.0).equals(current)
    assert mix_previous(current, None, 0.5).equals(current)


def test_pair_ids_already_present_are_skipped():
    current = pairs(0, 3)  # same ids as the first three previous pairs
    mixed = mix_previous(current, pairs(0, 4), 1.0)
    ids = mixed.column("pair_id").to_pylist()
    assert ids == ["0:p0:0:1", "0:p1:0:1", "0:p2:0:1", "0:p3:0:1"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="fraction must be in"):
        mix_previous(pairs(1, 1), pairs(0, 1), 1.5)
    with pytest.raises(ValueError, match="missing column"):
        mix_previous(pairs(1, 1), pa.table({"pair_id": ["x"]}), 0.5)


def test_only_the_previous_rounds_own_pairs_are_mixed_never_an_accumulation():
    """SPIN trains iteration t on t-1's and t's data: with 50 new pairs a round and fraction 1.0 every
    round trains on 100 pairs, not 50, 100, 150, 200 (k-1's table holds what was mixed into it)."""
    table, sizes = None, []
    for k in range(4):
        table = mix_previous(pairs(k, 50), table, 1.0, seed=k)
        sizes.append(table.num_rows)
        assert set(table.column("iteration").to_pylist()) == ({k - 1, k} if k else {0})
    assert sizes == [50, 100, 100, 100]
    half = mix_previous(pairs(3, 10), pa.concat_tables([pairs(2, 40), pairs(1, 40, start=100)]), 0.5, seed=0)
    assert half.num_rows == 10 + 20 and set(half.column("iteration").to_pylist()[10:]) == {2}
