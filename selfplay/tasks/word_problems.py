"""Grade-school word problems: templated prose with a numeric answer, graded the way GSM8K graders are.

A problem is a short story (names, quantities, a distracting detail or two) that needs one to three
arithmetic steps, then a question. The reference is the integer answer. Stories are 55-120 words,
which is about 70-160 tokens with a real BPE vocabulary (measured here: 230-415 tokens with the tiny
512-token BPE of ``selfplay.models.families``, which splits words finely; 310-590 characters).

Choices:

* Templates, not free text: every problem is one of ``len(TEMPLATES)`` stories whose numbers are drawn
  so each intermediate result is a whole, positive number (exact division, no negative stock).
* The canonical key is the template and its numbers (``"shop|a=40,b=12,c=7"``), not the rendered text:
  the name, the filler sentences and the wording variant are surface choices. Two prompts that differ
  only in those are the same problem, so they share a split and an eval problem is never seen in
  training under another name (``GeneratedTask`` splits by the key's hash).
* The verifier reads the *last* number in the response (``#### 42`` wins if present, as in GSM8K's
  reference format), removes thousands separators and a currency sign or unit around it, and compares
  numerically: ``"So she has $1,250 left."`` and ``"The answer is 1250.0 dollars"`` both match 1250.
  No number scores 0; scores are 0 or 1.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from selfplay.tasks.base import Example, GeneratedTask, Problem

NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Lena", "Omar", "Priya", "Lucas", "Sofia", "Daniel", "Mei", "Ravi"]
FILLER = [
    "It was a cold morning and the streets were still quiet.",
    "Everyone agreed that the week had gone by quickly.",
    "The radio in the corner was playing an old song.",
    "A neighbour stopped by to ask about the weather.",
    "Nobody wanted to do the counting twice, so they wrote everything down.",
    "The notebook with all the numbers was kept on the kitchen table.",
    "Later that evening they talked about what to do next year.",
]
QUESTION_PREFIX = ["", "Think it through. ", "Show your steps, then give the final number. "]


@dataclass(frozen=True)
class Template:
    """A story with slots ``{name}``, ``{a}``... and a function from the drawn numbers to the answer."""

    name: str
    story: str
    question: str
    draw: Callable[[random.Random], dict[str, int]]
    answer: Callable[[dict[str, int]], int]


def _shop(r: random.Random) -> dict[str, int]:
    a = r.randint(30, 120)
    b = r.randint(5, a - 10)
    return {"a": a, "b": b, "c": r.randint(5, 60), "d": r.randint(1, 9)}


def _trip(r: random.Random) -> dict[str, int]:
    return {"a": r.randint(40, 90), "b": r.randint(2, 6), "c": r.randint(10, 150)}


def _savings(r: random.Random) -> dict[str, int]:
    a, m = r.randint(150, 900), r.randint(3, 14)
    return {"a": a, "m": m, "b": r.randint(100, a * m - 50)}


def _garden(r: random.Random) -> dict[str, int]:
    a, b = r.randint(4, 25), r.randint(6, 30)
    return {"a": a, "b": b, "c": r.randint(1, a * b // 2)}


def _classroom(r: random.Random) -> dict[str, int]:
    k, each = r.randint(3, 12), r.randint(2, 15)
    return {"k": k, "a": k * each, "extra": r.randint(1, 20)}


def _factory(r: random.Random) -> dict[str, int]:
    return {"a": r.randint(12, 95), "h": r.randint(2, 10), "m": r.randint(2, 8), "d": r.randint(1, 30)}


TEMPLATES: list[Template] = [
    Template("shop",
             "{name} runs a small bakery at the end of the market street. On Monday morning {name} baked {a} "
             "loaves of bread and sold {b} of them before lunch. In the afternoon a cafe ordered {c} more "
             "loaves, so {name} baked exactly that many extra and set them aside. {filler} Just before closing, "
             "{d} of the loaves on the shelf were given to a shelter, and the cafe collected its order.",
             "How many loaves are left in the bakery at the end of the day?",
             _shop, lambda v: v["a"] - v["b"] - v["d"]),
    Template("trip",
             "{name} is driving to visit family in another city. The car travels at a steady {a} miles per "
             "hour on the highway. {filler} After driving for {b} hours without a break, {name} stops for "
             "lunch and then drives another {c} miles on small country roads to reach the house.",
             "How many miles did {name} drive in total?",
             _trip, lambda v: v["a"] * v["b"] + v["c"]),
    Template("savings",
             "{name} wants to buy a used piano and decides to save money. Every month {name} puts ${a} into a "
             "savings account and does not touch it. {filler} After saving for {m} months, {name} finds a "
             "piano that costs ${b} and buys it the same day, paying from the savings.",
             "How many dollars are left in the savings account after the purchase?",
             _savings, lambda v: v["a"] * v["m"] - v["b"]),
    Template("garden",
             "In the spring {name} plants a vegetable garden behind the house. There are {a} rows, and each "
             "row holds {b} tomato plants. {filler} During a storm in early summer, {c} of the plants are "
             "broken by the wind and have to be pulled out.",
             "How many tomato plants are still growing in the garden?",
             _garden, lambda v: v["a"] * v["b"] - v["c"]),
    Template("classroom",
             "{name} is a teacher who brought a box of {a} pencils to class. The pencils are shared equally "
             "among {k} tables, with none left over. {filler} Later the school office sends {extra} more "
             "pencils, but those go into the cupboard, not to the tables.",
             "How many pencils does each table get?",
             _classroom, lambda v: v["a"] // v["k"]),
    Template("factory",
             "A workshop where {name} works has {m} machines that make wooden toys. Each machine makes {a} "
             "toys per hour, and on Tuesday all the machines ran for {h} hours. {filler} At the end of the "
             "shift, {d} toys failed the quality check and were thrown away.",
             "How many good toys did the workshop make on Tuesday?",
             _factory, lambda v: v["m"] * v["a"] * v["h"] - v["d"]),
]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_FINAL_MARK = re.compile(r"####\s*(.*)", re.S)


def extract_answer(response: str) -> float | None:
    """The final number of ``response`` as GSM8K graders read it: the first number after ``####`` if
    there is one, else the last number in the text; thousands separators and surrounding units or
    currency signs are ignored. ``None`` when there is no number."""
    marked = _FINAL_MARK.search(response)
    if marked:
        found = _NUMBER.findall(marked.group(1))
        if found:
            return _to_float(found[0])
    found = _NUMBER.findall(response)
    return _to_float(found[-1]) if found else None


def _to_float(text: str) -> float | None:
    cleaned = text.replace(",", "")
    try:
        return float(cleaned)
    except ValueError:  # pragma: no cover - the regex only matches numbers
        return None


class WordProblemTask(GeneratedTask):
    """Templated grade-school word problems with an integer answer (see the module docstring)."""

    id_prefix = "wordprob"

    def __init__(self, chat: bool = True, train_size: int = 1000, eval_size: int = 200) -> None:
        super().__init__(chat=chat, train_size=train_size, eval_size=eval_size)

    def sample(self, rng: random.Random) -> Problem:
        template = rng.choice(TEMPLATES)
        values = template.draw(rng)
        answer = template.answer(values)
        name = rng.choice(NAMES)
        filler = " ".join(rng.sample(FILLER, rng.randint(1, 2)))
        story = template.story.format(name=name, filler=filler, **values)
        text = f"{story}\n\n{rng.choice(QUESTION_PREFIX)}{template.question.format(name=name)}"
        key = f"{template.name}|" + ",".join(f"{k}={values[k]}" for k in sorted(values))
        return Problem(key=key, text=text, reference=str(answer), meta={"template": template.name})

    def score(self, example: Example, response: str) -> float:
        if example.reference is None:
            raise ValueError(f"example {example.id} has no reference to verify against")
        got = extract_answer(response)
        return 1.0 if got is not None and abs(got - float(example.reference)) < 1e-6 else 0.0
