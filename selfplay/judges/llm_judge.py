"""LLM-as-a-judge: a language model compares two responses and names the better one, "A" or "B".

The judge needs only a ``complete(list[str]) -> list[str]`` callable (one completion per judge prompt),
so any engine fits: ``engine_complete`` adapts the vLLM generator, and tests pass a plain function.

Choices:

* Every pair of samples of a prompt is judged; with ``both_orders`` each pair is asked twice, A/B
  swapped, and the two verdicts are combined by ``selfplay.judges.compare``: a consistent win is 1, a
  split (the judge always picked the same position) is 0.5, so a constant position bias cancels.
  Scores are per-sample win rates, as in SPPO.
* ``parse_verdict`` reads messy output ("Answer: B", "**A**", "response b is better", "[[A]]", "A.")
  but never guesses: output naming both letters ("A and B") or neither is *unparseable*. An unparseable
  verdict makes that comparison undecided; a sample with no decided comparison scores ``None``.
  ``stats`` counts verdicts, unparseable ones and how often the first position won (position bias).
* The template is filled by one regex pass over ``{prompt}``, ``{a}``, ``{b}``, so braces inside the
  prompt or the responses are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from selfplay.judges.base import PromptGroup, Scores, prompt_text
from selfplay.judges.compare import comparisons, win_rates

Complete = Callable[[list[str]], list[str]]

DEFAULT_TEMPLATE = (
    "Which response answers the prompt better?\n\n"
    "[Prompt]\n{prompt}\n\n"
    "[Response A]\n{a}\n\n"
    "[Response B]\n{b}\n\n"
    'Reply with one letter, "A" or "B".\nVerdict:'
)

_FIELDS = re.compile(r"\{(prompt|a|b)\}")
_LETTER = r"[\(\[\*\"'`]*([AB])[\)\]\*\"'`]*"
# Phrases that name the chosen letter explicitly; matched case-insensitively. The flag says the letter
# ends the phrase, where a lowercase "a" must end the clause ("answer: a."), not start one ("is a tie").
_STRONG: list[tuple[re.Pattern[str], bool]] = [
    (re.compile(r"\b(?:final\s+)?(?:answer|verdict|winner|choice|decision|preferred|preference)\b"
                r"(?:\s+is)?\s*[:=\-]?\s*" + _LETTER + r"(?![A-Za-z])", re.I), True),
    (re.compile(r"\b(?:response|output|answer|assistant|option|candidate)\s+" + _LETTER +
                r"\s+(?:is|was|wins|seems|looks)\b(?!\s+(?:worse|wrong|incorrect|bad))", re.I), False),
    (re.compile(r"\bbetter\s+(?:response|one|answer|output)\s+is\s+" + _LETTER + r"(?![A-Za-z])", re.I),
     True),
    (re.compile(r"\bI\s+(?:prefer|choose|pick|select)\s+(?:response\s+|output\s+)?" + _LETTER +
                r"(?![A-Za-z])", re.I), True),
    (re.compile(r"^\W*" + _LETTER + r"\s+(?:is|wins)\s+(?:better|superior|preferred|the\s+better)\b", re.I),
     False),
    (re.compile(r"\[\[([AB])\]\]", re.I), False),
    (re.compile(r"(?<![A-Za-z])([AB])\s*>\s*[AB](?![A-Za-z])", re.I), False),
]
_BARE = re.compile(r"^[\s\W_]*([AB])[\s\W_]*$", re.I)  # the whole output is one letter
_STANDALONE = re.compile(r"(?<![A-Za-z'])([AB])(?![A-Za-z'])")  # uppercase only: "a" is an article


def parse_verdict(text: str | None) -> str | None:
    """"A", "B", or ``None`` when the output names neither letter or both."""
    if not text:
        return None
    bare = _BARE.match(text)
    if bare:
        return bare.group(1).upper()
    found: set[str] = set()
    for pattern, letter_last in _STRONG:
        for m in pattern.finditer(text):
            letter = m.group(1)
            if letter_last and letter == "a" and re.match(r"\s+[A-Za-z]", text[m.end(1):]):
                continue
            found.add(letter.upper())
    if not found:
        found = set(_STANDALONE.findall(text))
    return found.pop() if len(found) == 1 else None


def fill_template(template: str, prompt: str, a: str, b: str) -> str:
    values = {"prompt": prompt, "a": a, "b": b}
    return _FIELDS.sub(lambda m: values[m.group(1)], template)


class LLMJudge:
    """Per-sample win rates from an LLM's A/B verdicts over all pairs of a prompt's samples."""

    def __init__(self, complete: Complete, template: str | None = None, both_orders: bool = True,
                 name: str = "llm_judge") -> None:
        self.complete = complete
        self.template = template or DEFAULT_TEMPLATE
        missing = [f"{{{f}}}" for f in ("prompt", "a", "b") if f"{{{f}}}" not in self.template]
        if missing:
            raise ValueError(f"judge.template: missing placeholder(s) {', '.join(missing)}")
        self.both_orders = both_orders
        self.name = name
        self.stats: dict[str, Any] = {"verdicts": 0, "unparseable": 0, "first_position_wins": 0}

    def score(self, groups: list[PromptGroup]) -> Scores:
        asks: list[tuple[int, int, int]] = []  # (group, first, second)
        texts: list[str] = []
        for g, group in enumerate(groups):
            prompt = prompt_text(group.prompt)
            for i, j in comparisons(len(group.responses), self.both_orders):
                asks.append((g, i, j))
                texts.append(fill_template(self.template, prompt, group.responses[i], group.responses[j]))
        outputs = self.complete(texts) if texts else []
        if len(outputs) != len(texts):
            raise ValueError(f"the judge engine returned {len(outputs)} completions for {len(texts)} prompts")
        prefs: list[dict[tuple[int, int], float | None]] = [{} for _ in groups]
        for (g, i, j), output in zip(asks, outputs):
            verdict = parse_verdict(output)
            self.stats["verdicts"] += 1
            if verdict is None:
                self.stats["unparseable"] += 1
            self.stats["first_position_wins"] += verdict == "A"
            prefs[g][(i, j)] = None if verdict is None else float(verdict == "A")
        return [win_rates(p, len(group.responses)) for p, group in zip(prefs, groups)]


def engine_complete(engine: Any, max_tokens: int = 16, chat: bool = True) -> Complete:
    """Adapt a generator engine (``generate(prompts, sampling) -> list[list[Completion]]``) to
    ``complete``: greedy, one completion per judge prompt, sent as a user chat message when ``chat``."""
    from selfplay.generate.types import Sampling

    sampling = Sampling(n=1, temperature=0.0, max_tokens=max_tokens)

    def complete(texts: list[str]) -> list[str]:
        prompts: list[Any] = [[{"role": "user", "content": t}] for t in texts] if chat else list(texts)
        return [samples[0].text for samples in engine.generate(prompts, sampling)]

    return complete
