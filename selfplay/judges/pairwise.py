"""Pairwise judge (PairRM-like): a model reads (prompt, a, b) and gives P(a better than b).

The model is a one-label sequence-classification model over the rendered triple; a sigmoid of its logit
is P(a beats b). Every ordered pair of a prompt's samples is scored (both orders, so a position bias of
the ranker cancels) and aggregated to per-sample win rates by ``selfplay.judges.compare.win_rates``,
as SPPO does with PairRM. A model fitted for this judge should be trained on ``render_triple`` text.
"""

from __future__ import annotations

import math
from pathlib import Path

from selfplay.judges.base import Prompt, PromptGroup, Scores, prompt_text
from selfplay.judges.compare import comparisons, win_rates

TRIPLE_TEMPLATE = "{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}"


def render_triple(prompt: Prompt, a: str, b: str) -> str:
    """The text the pairwise model scores (plain text; no chat template)."""
    return TRIPLE_TEMPLATE.format(prompt=prompt_text(prompt), a=a, b=b)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class PairwiseJudge:
    """Per-sample win rates from a pairwise preference model over all ordered pairs of samples."""

    def __init__(self, path: str | Path, batch_size: int = 16, max_length: int = 1024) -> None:
        from selfplay.judges.reward_model import SequenceScorer

        self.scorer = SequenceScorer(path, batch_size=batch_size, max_length=max_length)
        self.name = f"pairwise:{Path(path).name}"

    def score(self, groups: list[PromptGroup]) -> Scores:
        asks = [(g, i, j) for g, group in enumerate(groups) for i, j in comparisons(len(group.responses))]
        texts = [render_triple(groups[g].prompt, groups[g].responses[i], groups[g].responses[j])
                 for g, i, j in asks]
        logits = self.scorer.logits(texts, add_special_tokens=True) if texts else []
        prefs: list[dict[tuple[int, int], float | None]] = [{} for _ in groups]
        for (g, i, j), logit in zip(asks, logits):
            prefs[g][(i, j)] = sigmoid(logit)
        return [win_rates(p, len(group.responses)) for p, group in zip(prefs, groups)]
