"""Pairs: judged samples become (chosen, rejected) training pairs (``build.py``), optionally mixed with
the previous iteration's (``mix.py``). Columns are ``PAIRS_SCHEMA`` (``selfplay.records``). Pure pyarrow."""

from selfplay.pairs.build import NO_PAIR_REASONS, REFERENCE_SCORE, STRATEGIES, build_pairs, no_pair_hint
from selfplay.pairs.mix import mix_previous
from selfplay.records import PAIRS_SCHEMA

__all__ = ["NO_PAIR_REASONS", "PAIRS_SCHEMA", "REFERENCE_SCORE", "STRATEGIES", "build_pairs", "mix_previous",
           "no_pair_hint"]
