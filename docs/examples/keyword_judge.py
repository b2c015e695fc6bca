"""A judge of your own: reward responses that use given words, and shorter ones. The example of docs/judges.md.

Use it with ``judge: {type: python, target: "docs.examples.keyword_judge:KeywordJudge",
kwargs: {words: [answer, because]}}``. A judge gets prompt groups (``.prompt_id``, ``.prompt``,
``.responses``, ``.reference``, ``.meta``) and returns one score per response: a finite float, or
``None`` when it cannot decide (that response takes part in no pair).
"""

from __future__ import annotations

import re


class KeywordJudge:
    def __init__(self, words: list[str], max_words: int = 40) -> None:
        self.words = [w.lower() for w in words]
        self.max_words = max_words

    def score(self, groups) -> list[list[float | None]]:
        out = []
        for group in groups:
            row: list[float | None] = []
            for response in group.responses:
                tokens = re.findall(r"[a-z0-9']+", response.lower())
                if not tokens:
                    row.append(None)  # an empty response: undecided, not "bad"
                    continue
                hits = sum(w in tokens for w in self.words) / len(self.words)
                row.append(hits - 0.5 * min(1.0, len(tokens) / self.max_words))  # up to -0.5 for length
            out.append(row)
        return out
