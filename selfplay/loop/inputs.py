"""Checks of what a task supplies, run in preflight before any actor starts.

The schema checks a recipe's shape and preflight the files it names; this module builds the task once
and checks what it returns: that it builds at all (a plug-in's constructor that raises is named), that
its examples are ``Example`` objects, that there are enough prompts for an iteration, that a verifier
returns a float in [0, 1], that offline pairs differ, and that every prompt fits the generator's
context (``generation.max_model_len`` minus ``max_tokens``) under the recipe's ``long_prompts`` policy.

Choices:

* Problems are ``"field: what is wrong"`` lines; every problem found is reported at once.
* A data file that is not UTF-8 is reported with its line and the offending byte (the decoder's own
  error gives a byte offset and no file).
* Prompt lengths are measured with the policy's own tokenizer and prompt rendering
  (:func:`selfplay.generate.types.encode_prompts`), so the check and the engine agree. A preset policy's
  tokenizer is built the way ``build_policy`` builds it.
* ``drop`` and ``truncate`` wrap the task (:class:`FittedTask`) so every later stage, evaluation
  included, sees the same prompts; ``truncate`` keeps the end of the prompt (where the question is).
"""

from __future__ import annotations

import math
from dataclasses import replace
from numbers import Real
from pathlib import Path
from typing import Any

from selfplay.config import RunConfig


class InputProblems(Exception):
    """Collected problems (``field: message`` lines) found while checking the task."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def utf8_problem(path: Path) -> str | None:
    """``"file: line N: ..."`` for the first byte of ``path`` that is not UTF-8, or None."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return (f"{path}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 "
                "(re-save the file as UTF-8; e.g. iconv -f latin1 -t utf-8)")
    return None


def build_checked_task(cfg: RunConfig) -> Any:
    """The task the recipe describes; an error names the task (file, row or plug-in) and the cause."""
    from selfplay.loop.factory import build_task_from_config

    t = cfg.task
    try:
        return build_task_from_config(cfg)
    except UnicodeDecodeError:
        files = [Path(p) for p in (getattr(t, "path", None), getattr(t, "eval_path", None)) if p]
        found = [p for p in (utf8_problem(f) for f in files) if p]
        raise InputProblems([f"task.path: {found[0]}" if found else "task.path: a data file is not UTF-8"]) from None
    except ImportError as exc:  # PluginError: already names the spec and the failing part
        raise InputProblems([f"task.target: {exc}"]) from None
    except Exception as exc:  # noqa: BLE001  (a user's code may raise anything)
        if t.type == "python":
            raise InputProblems([f"task.target: building {t.target!r}(**{t.kwargs}) raised "
                                 f"{type(exc).__name__}: {exc}"]) from None
        raise InputProblems([f"task: {exc}"]) from None


def _where(ex: Any) -> str:
    meta = getattr(ex, "meta", None) or {}
    if "source" in meta and "row" in meta:
        return f"{meta['source']} row {meta['row']}"
    return f"prompt {getattr(ex, 'id', '?')!r}"


def _examples(task: Any, split: str, seed: int) -> list[Any]:
    method = f"{split}_examples"
    try:
        items = getattr(task, method)(None, seed=seed)
    except Exception as exc:  # noqa: BLE001
        raise InputProblems([f"task: {method}() raised {type(exc).__name__}: {exc}"]) from None
    from selfplay.tasks.base import Example

    if not isinstance(items, list | tuple):
        raise InputProblems([f"task: {method}() returned a {type(items).__name__}; expected a list of "
                             "selfplay.tasks.Example"])
    for i, item in enumerate(items):
        if not isinstance(item, Example):
            raise InputProblems([f"task: {method}() item {i} is a {type(item).__name__} ({item!r:.60}); expected "
                                 "selfplay.tasks.Example(id, prompt, reference=None, meta={})"])
    return list(items)


def check_task(cfg: RunConfig, task: Any) -> tuple[list[str], list[str]]:
    """(problems, warnings) about what ``task`` returns."""
    problems: list[str] = []
    warnings: list[str] = []
    train = _examples(task, "train", cfg.seed)
    if not train:
        problems.append("task: train_examples() returned no prompts")
    per_iter = cfg.generation.prompts_per_iteration
    if cfg.task.type != "pairs" and 0 < len(train) < per_iter:
        warnings.append(f"the task has only {len(train)} training prompts but generation.prompts_per_iteration "
                        f"is {per_iter}: every iteration uses those {len(train)}")
    if cfg.judge is not None and cfg.judge.type == "verifier" and getattr(task, "has_verifier", False):
        who = f"task.target: {cfg.task.target}" if cfg.task.type == "python" else "task: the verifier"
        problems.extend(f"{who} {p}" for p in _verifier_problems(task, train[:3]))
    if cfg.task.type == "pairs":
        same = [i for i, r in enumerate(getattr(task, "rows", [])) if isinstance(r["chosen"], str)  # multi-turn
                and isinstance(r["rejected"], str) and r["chosen"].strip() == r["rejected"].strip()]  # sides differ
        if same:
            problems.append(f"task.path: {len(same)} of {len(task.rows)} pairs have chosen == rejected (rows "
                            f"{', '.join(map(str, same[:5]))}{', ...' if len(same) > 5 else ''}): such a pair "
                            "prefers nothing; remove them")
    return problems, warnings


def _verifier_problems(task: Any, examples: list[Any]) -> list[str]:
    out = []
    for ex in examples:
        for response in ([ex.reference] if ex.reference else []) + ["", "?"]:
            try:
                value = task.score(ex, response)
            except Exception as exc:  # noqa: BLE001
                return [f"score() raised {type(exc).__name__}: {exc} on {_where(ex)}, response {response!r}"]
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)) \
                    or not 0.0 <= float(value) <= 1.0:
                out.append(f"score() returned {value!r} on {_where(ex)}, response {response!r}; a verifier "
                           "score is a float in [0, 1]")
                return out
    return out


# --------------------------------------------------------------------------------------- prompt lengths


def policy_tokenizer(cfg: RunConfig) -> Any:
    """The tokenizer the generators will use: the model directory's, or the one a preset is built with."""
    if cfg.policy.path is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cfg.policy.path, local_files_only=True)
    from selfplay.models.tokenizer import build_tokenizer

    return build_tokenizer(cfg.policy.tokenizer)


class FittedTask:
    """A task whose prompts over the length limit are dropped or truncated (``generation.long_prompts``)."""

    def __init__(self, task: Any, tokenizer: Any, limit: int, policy: str, later_turns: tuple[int, int] | None = None):
        self.task, self.tokenizer, self.limit, self.policy = task, tokenizer, limit, policy
        self.later_turns = later_turns  # a sessions task's (segment_turns, max_tokens): see ``extra``
        self.has_verifier = getattr(task, "has_verifier", False)
        self._cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:  # pairs_table, rows, path, ... of the wrapped task
        return getattr(self.task, name)

    def length(self, prompt: Any) -> int:
        from selfplay.generate.types import encode_prompts

        return len(encode_prompts(self.tokenizer, [prompt])[0])

    def lengths(self, prompts: list[Any]) -> list[int]:
        """Token counts of many prompts; plain text without a chat template is encoded in one batch
        (the same ids :func:`encode_prompts` gives one at a time)."""
        if not getattr(self.tokenizer, "chat_template", None) and all(isinstance(p, str) for p in prompts):
            return [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]] if prompts else []
        return [self.length(p) for p in prompts]

    def extra(self, ex: Any) -> int:
        """Tokens a negative session's later turns can add to its prompt (0 for any other example).

        Session play's last prompt is the history, then per later turn a played assistant turn (at most
        ``max_tokens``) and the replayed user turn of the negative session: measured as the history
        rendered with those user turns and empty assistant turns, plus ``max_tokens`` per played turn."""
        rejected = (getattr(ex, "meta", None) or {}).get("rejected")
        if self.later_turns is None or not rejected or isinstance(ex.prompt, str):
            return 0
        turns, max_tokens = self.later_turns
        users = [m for m in rejected if m.get("role") == "user"][: turns - 1]
        if not users:
            return 0
        skeleton = [m for u in users for m in ({"role": "assistant", "content": ""}, dict(u))]
        return self.length([*ex.prompt, *skeleton]) - self.length(ex.prompt) + len(users) * max_tokens

    def fit(self, ex: Any) -> Any | None:
        """``ex`` when it fits; else None (drop) or a copy with the prompt's start cut (truncate)."""
        if ex.id not in self._cache:
            extra = self.extra(ex)
            if self.length(ex.prompt) + extra <= self.limit:
                self._cache[ex.id] = ex
            elif self.policy == "drop" or extra >= self.limit:
                self._cache[ex.id] = None
            else:
                self._cache[ex.id] = replace(ex, prompt=self._truncate(ex.prompt, self.limit - extra))
        return self._cache[ex.id]

    def _truncate(self, prompt: Any, limit: int) -> Any:
        def with_text(text: str) -> Any:
            if isinstance(prompt, str):
                return text
            messages = [dict(m) for m in prompt]
            messages[longest]["content"] = text
            return messages

        longest = 0 if isinstance(prompt, str) else max(range(len(prompt)), key=lambda i: len(prompt[i]["content"]))
        text = prompt if isinstance(prompt, str) else prompt[longest]["content"]
        lo, hi = 0, len(text)  # smallest cut (characters from the start) that fits
        while lo < hi:
            mid = (lo + hi) // 2
            if self.length(with_text(text[mid:])) <= limit:
                hi = mid
            else:
                lo = mid + 1
        return with_text(text[lo:])

    def _fitted(self, items: list[Any]) -> list[Any]:
        return [f for f in (self.fit(ex) for ex in items) if f is not None]

    def train_examples(self, n: int | None = None, seed: int = 0) -> list[Any]:
        return self._fitted(self.task.train_examples(n, seed=seed))

    def eval_examples(self, n: int | None = None, seed: int = 0) -> list[Any]:
        return self._fitted(self.task.eval_examples(n, seed=seed))

    def score(self, example: Any, response: str) -> float:
        return self.task.score(example, response)


def check_prompt_lengths(cfg: RunConfig, task: Any) -> tuple[Any, list[str], list[str]]:
    """(task to use, problems, warnings) for prompts longer than the generator's context allows."""
    if cfg.task.type == "pairs":
        return task, [], []  # offline pairs are not generated from; train.max_prompt_length applies
    gen = cfg.generation
    turns = cfg.train.loss.segment_turns if cfg.task.type == "sessions" else None
    later = (turns, gen.max_tokens) if turns and turns > 1 else None
    fitted = FittedTask(task, policy_tokenizer(cfg), gen.max_prompt_tokens, gen.long_prompts, later)
    splits = [("train", task.train_examples(None, seed=cfg.seed))]
    if cfg.evaluation.num_prompts > 0:
        splits.append(("eval", _examples(task, "eval", cfg.seed)))
    measured = [(split, ex, n, fitted.extra(ex)) for split, items in splits
                for ex, n in zip(items, fitted.lengths([ex.prompt for ex in items]))]
    long = [(split, ex, n + extra, extra) for split, ex, n, extra in measured if n + extra > gen.max_prompt_tokens]
    if not long:
        return task, [], []
    what = (f" at its last turn (the history, {turns - 1} replayed user turn(s) and as many played turns of up to "
            f"max_tokens)" if later else "")
    rows = "; ".join(f"{_where(ex)} ({split}) has {n} tokens{what if extra else ''}"
                     for split, ex, n, extra in long[:3])
    more = f" and {len(long) - 3} more" if len(long) > 3 else ""
    limit = (f"the limit is generation.max_model_len ({gen.max_model_len}) - generation.max_tokens "
             f"({gen.max_tokens}) = {gen.max_prompt_tokens}")
    if gen.long_prompts == "error":
        fix = ", lower train.loss.segment_turns" if later else ""
        return task, [f"task: {len(long)} prompt(s) too long: {rows}{more}; {limit}. Raise max_model_len{fix}, or "
                      "set generation.long_prompts to drop or truncate"], []
    done = {"drop": "dropped", "truncate": "truncated to their last tokens"}[gen.long_prompts]
    return fitted, [], [f"{len(long)} prompt(s) too long ({rows}{more}; {limit}): {done}"]
