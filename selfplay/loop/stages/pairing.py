"""The pairs stage: preference pairs from the judged samples (or an offline dataset's chunk), and what
the later stages read from its record (no pairs, the share of prompts already solved)."""

from __future__ import annotations

from typing import Any

from selfplay.loop.manifest import PairsRecord, Stage
from selfplay.loop.rundir import read_parquet, write_parquet
from selfplay.loop.stages.context import Iteration, StageContext


def build_pairs(rt: StageContext, it: Iteration) -> PairsRecord:
    from selfplay.pairs import build_pairs as make_pairs
    from selfplay.pairs import mix_previous

    judgments = read_parquet(it.dir / "judgments.parquet")
    pairs, stats = make_pairs(judgments, rt.cfg.pairing, rt.cfg.pairing_strategy, seed=it.pair_seed)
    if rt.cfg.pairing.mix_previous > 0 and it.k > 0:
        previous = read_parquet(rt.rd.iter_dir(it.k - 1) / "pairs.parquet")
        pairs = mix_previous(pairs, previous, rt.cfg.pairing.mix_previous, seed=it.pair_seed)
        stats["mixed_in"] = pairs.num_rows - stats.get("pairs", 0)
    return _write_pairs(rt, it, pairs, stats)


def dataset_pairs(rt: StageContext, it: Iteration) -> PairsRecord:
    """Offline pairs: iteration k's chunk of the task's pairs dataset (nothing is generated or judged)."""
    pairs = rt.task.pairs_table(iteration=it.k)
    return _write_pairs(rt, it, pairs, {"pairs": pairs.num_rows, "source": "dataset"})


def _write_pairs(rt: StageContext, it: Iteration, pairs, stats: dict[str, Any]) -> PairsRecord:
    write_parquet(it.dir / "pairs.parquet", pairs)
    record = PairsRecord.model_validate({**stats, "pairs": pairs.num_rows})
    if pairs.num_rows == 0:  # not an error: nothing to learn from this iteration, the policy stays as it is
        from selfplay.pairs import no_pair_hint

        record.no_pairs = True
        record.hint = no_pair_hint(stats) or record.hint  # a sessions task's pairs stage puts its reason there
        reason = record.hint or ("no prompts" if not stats.get("prompts") else "no prompt had a pair")
        rt.log(f"  iteration {it.k} has no preference pairs, so the policy is kept unchanged: {reason}")
    return record


def _pairs_record(rt: StageContext, k: int) -> PairsRecord:
    record = rt.rd.stage_record(k, Stage.PAIRS)
    assert isinstance(record, PairsRecord)
    return record


def no_pairs(rt: StageContext, k: int) -> bool:
    """True when iteration ``k`` built no pairs: its later stages keep the policy as it is."""
    return _pairs_record(rt, k).no_pairs


def solved_share(rt: StageContext, k: int) -> float | None:
    """Share of iteration ``k``'s training prompts whose samples were all correct (verifier score 1)."""
    record = _pairs_record(rt, k)
    return record.no_pair_all_correct / record.prompts if record.prompts else None
