"""Pairwise judge (PairRM-like): a model reads (prompt, a, b) and gives P(a better than b).

The model is a one-label sequence-classification model over the rendered triple; a sigmoid of its logit
is P(a beats b). Every ordered pair of a prompt's samples is scored (both orders, so a position bias of
the ranker cancels) and aggregated to per-sample win rates by ``selfplay.judges.compare.win_rates``,
as SPPO does with PairRM (``include_self`` adds SPPO's self-comparison at ½ to each average). A model
fitted for this judge should be trained on ``render_triple`` text. llm-blender's PairRM itself is not
supported (see ``selfplay.judges.reward_model``): it is refused, never loaded with a random head.

Length: a triple holds the prompt and *two* responses, so it outgrows ``max_length`` long before a
single (prompt, response) does. Truncating it would cut response A or B silently, so it is never
truncated: with ``overflow: error`` the first over-long triple fails the judge with the lengths named;
with ``overflow: skip`` those comparisons are left undecided and counted (``stats["overlong"]``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from selfplay.judges.base import PromptGroup, Scores, prompt_text
from selfplay.judges.compare import comparisons, win_rates
from selfplay.records import Prompt

TRIPLE_TEMPLATE = "{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}"


def render_triple(prompt: Prompt, a: str, b: str) -> str:
    """The text the pairwise model scores (plain text; no chat template)."""
    return TRIPLE_TEMPLATE.format(prompt=prompt_text(prompt), a=a, b=b)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class PairwiseOverflowError(ValueError):
    """A (prompt, a, b) triple does not fit the pairwise judge's ``max_length``."""


class PairwiseJudge:
    """Per-sample win rates from a pairwise preference model over all ordered pairs of samples."""

    def __init__(self, path: str | Path, batch_size: int = 16, max_length: int = 1024, overflow: str = "error",
                 include_self: bool = False) -> None:
        from selfplay.judges.reward_model import SequenceScorer

        if overflow not in ("error", "skip"):
            raise ValueError(f"judge.overflow must be 'error' or 'skip', got {overflow!r}")
        self.scorer = SequenceScorer(path, batch_size=batch_size, max_length=max_length)
        self.name = f"pairwise:{Path(path).name}"
        self.max_length = max_length
        self.overflow = overflow
        self.include_self = include_self
        self.stats: dict[str, Any] = {"comparisons": 0, "overlong": 0, "longest_triple": 0}

    def _fits(self, texts: list[str]) -> list[bool]:
        lengths = [len(ids) for ids in self.scorer.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        if lengths:
            self.stats["longest_triple"] = max(self.stats["longest_triple"], max(lengths))
        fits = [n <= self.max_length for n in lengths]
        over = fits.count(False)
        self.stats["overlong"] += over
        if over and self.overflow == "error":
            raise PairwiseOverflowError(
                f"{self.name}: {over} of {len(texts)} (prompt, a, b) triples exceed judge.max_length "
                f"{self.max_length} tokens (longest {max(lengths)}); raise judge.max_length, cap "
                "generation.max_tokens, or set judge.overflow: skip to leave them undecided")
        return fits

    def score(self, groups: list[PromptGroup]) -> Scores:
        asks = [(g, i, j) for g, group in enumerate(groups) for i, j in comparisons(len(group.responses))]
        texts = [render_triple(groups[g].prompt, groups[g].responses[i], groups[g].responses[j])
                 for g, i, j in asks]
        fits = self._fits(texts) if texts else []
        kept = [k for k, ok in enumerate(fits) if ok]
        logits = self.scorer.logits([texts[k] for k in kept], add_special_tokens=True) if kept else []
        self.stats["comparisons"] += len(kept)
        prefs: list[dict[tuple[int, int], float | None]] = [{} for _ in groups]
        for (g, i, j) in asks:
            prefs[g][(i, j)] = None  # undecided unless scored below
        for k, logit in zip(kept, logits):
            g, i, j = asks[k]
            prefs[g][(i, j)] = sigmoid(logit)
        return [win_rates(p, len(group.responses), include_self=self.include_self)
                for p, group in zip(prefs, groups)]
