"""From pairwise preferences within one prompt to one score per sample: the win rate.

SPPO scores each sample by its estimated probability of beating the other samples of the same prompt:
``score_i = mean_{j != i} P(i beats j)``. Comparing judges (a PairRM-like ranker, an LLM judge) give
``P(a beats b)`` for a *presented order* (a first, b second), which carries position bias. So:

* ``prefs[(i, j)]`` is the judge's P(i beats j) with i shown first; ``None`` means the judge could not
  decide that comparison; a missing key means that order was not asked.
* When both orders were asked, the symmetric estimate ``(prefs[i, j] + 1 - prefs[j, i]) / 2`` cancels a
  constant position bias. If either order is undecided the comparison counts as undecided (a verdict
  is never guessed from half the evidence).
* A sample with no decided comparison (a lone sample, or all undecided) scores ``None``.
* ``include_self`` is SPPO's average: the sample's comparison with itself (½) counts as one of the
  terms, ``score_i = (½ + sum_{j != i} P(i beats j)) / n`` (``scripts/compute_prob.py`` of uclaml/SPPO
  sums a row of the n x n probability matrix, diagonal included, and divides by n).
"""

from __future__ import annotations

from collections.abc import Mapping

Prefs = Mapping[tuple[int, int], float | None]


def comparisons(n: int, both_orders: bool = True) -> list[tuple[int, int]]:
    """The (first, second) orders to ask for ``n`` samples: every ordered pair, or each pair once."""
    return [(i, j) for i in range(n) for j in range(n) if i != j and (both_orders or i < j)]


def pair_preference(prefs: Prefs, i: int, j: int) -> float | None:
    """P(i beats j), order-symmetrised where both orders were asked; ``None`` if undecided or unasked."""
    forward, backward = (i, j) in prefs, (j, i) in prefs
    if not forward and not backward:
        return None
    p_ij = prefs.get((i, j)) if forward else None
    p_ji = prefs.get((j, i)) if backward else None
    if (forward and p_ij is None) or (backward and p_ji is None):
        return None
    if forward and backward:
        return (p_ij + 1.0 - p_ji) / 2.0
    return p_ij if forward else 1.0 - p_ji


def win_rates(prefs: Prefs, n: int, include_self: bool = False) -> list[float | None]:
    """Per-sample mean probability of beating the other samples (``None`` where nothing was decided);
    ``include_self`` also averages in the self-comparison at ½ (SPPO)."""
    out: list[float | None] = []
    for i in range(n):
        decided = [p for j in range(n) if j != i if (p := pair_preference(prefs, i, j)) is not None]
        if include_self and decided:
            decided.append(0.5)
        out.append(sum(decided) / len(decided) if decided else None)
    return out
