"""The records of the generate stage: how to sample (``Sampling``) and what came out (``Completion``).

Both are plain frozen dataclasses (picklable across Ray, no engine imports), shared by every engine.

Choices:

* Seeds are per prompt, derived from the run's sampling seed and the prompt's *global* index
  (:meth:`Sampling.prompt_seed`). A sample therefore does not depend on which replica, shard or batch
  produced it, and a seeded run is reproducible however the prompts were split. vLLM gives sample ``j``
  of a prompt the seed ``prompt_seed + j``; derived seeds are spread over 30 bits so neighbours do not
  collide.
* ``temperature == 0`` is greedy decoding in every engine.
* ``Completion.logprobs`` (when requested) are the *raw* model log-probs of the sampled tokens (before
  temperature/top-k/top-p), the quantity a preference loss recomputes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from selfplay.records import Prompt  # noqa: F401  (one alias: text or chat messages)


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters for one generate call (``n`` samples per prompt)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Sampling.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"Sampling.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"Sampling.temperature must be >= 0, got {self.temperature}")
        if self.top_k == 0:
            raise ValueError("Sampling.top_k: 0 is not allowed; use -1 to disable top-k")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @classmethod
    def from_config(cls, cfg: Any, seed: int | None = None, **overrides: Any) -> Sampling:
        """Build from a ``GenerationConfig`` (or anything with the same fields); ``overrides`` win."""
        fields = dict(
            n=cfg.n,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_tokens=cfg.max_tokens,
            stop=tuple(cfg.stop),
            seed=seed,
            logprobs=cfg.logprobs,
            stop_token_ids=tuple(getattr(cfg, "stop_token_ids", ())),
        )
        return cls(**{**fields, **overrides})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_(self, **changes: Any) -> Sampling:
        return replace(self, **changes)

    def prompt_seed(self, prompt_index: int) -> int | None:
        """The seed of prompt ``prompt_index`` (a global index), or ``None`` for an unseeded run."""
        if self.seed is None:
            return None
        digest = hashlib.sha256(f"selfplay:{self.seed}:{prompt_index}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x3FFF_FFFF

    def fingerprint(self) -> str:
        """A short hash of every parameter (shards record it so a resume never mixes two settings)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Completion:
    """One sample: ``token_ids`` are the generated tokens (an ending EOS included), ``text`` their decoding
    without special tokens (cut before a matched stop string). ``finish_reason`` is ``stop`` (EOS or a
    stop string) or ``length``."""

    prompt_index: int
    sample_index: int
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    logprobs: tuple[float, ...] | None = None
    policy_version: int = 0

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["token_ids"] = list(self.token_ids)
        row["logprobs"] = None if self.logprobs is None else list(self.logprobs)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Completion:
        lp = row.get("logprobs")
        return cls(
            prompt_index=int(row["prompt_index"]),
            sample_index=int(row["sample_index"]),
            token_ids=tuple(row["token_ids"]),
            text=row["text"],
            finish_reason=row["finish_reason"],
            logprobs=None if lp is None else tuple(lp),
            policy_version=int(row["policy_version"]),
        )


def prompt_of(item: Any) -> Prompt:
    """The prompt of ``item``: a string, a chat-message list, or an object with a ``.prompt`` (a task
    ``Example``)."""
    prompt = getattr(item, "prompt", item)
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list | tuple) and all(isinstance(m, dict) and "role" in m for m in prompt):
        return [dict(m) for m in prompt]
    raise TypeError(f"a prompt is a string or a list of chat messages, got {type(prompt).__name__}")


def encode_prompts(tokenizer: Any, prompts: list[Any]) -> list[list[int]]:
    """Token ids of each prompt, identical for every engine (so greedy outputs can match exactly).

    With a chat template, a prompt is rendered with it (``add_generation_prompt=True``; a plain string is
    one user turn) and encoded without adding special tokens, since the template writes them: a chat
    model is always prompted the way it was trained. Without a template (a base model), plain strings are
    encoded the tokenizer's usual way, and a chat-message prompt is an error.
    """
    out = []
    templated = bool(getattr(tokenizer, "chat_template", None))
    for item in prompts:
        prompt = prompt_of(item)
        if isinstance(prompt, str) and not templated:
            out.append(list(tokenizer(prompt)["input_ids"]))
            continue
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not templated:
            raise ValueError("a chat-message prompt needs a tokenizer with a chat template")
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    for i, ids in enumerate(out):
        if not ids:
            raise ValueError(f"prompt {i} encodes to no tokens")
    return out


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` cut before the first stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def engine_info(engine: Any) -> dict[str, Any]:
    """What every engine reports about itself (which weights it holds, and its last load's timings)."""
    return {
        "backend": engine.backend,
        "version": engine.version,
        "checksum": engine.checksum,
        "model_path": str(engine.model_path),
        "vocab_size": engine.vocab_size,
        "last_load": engine.last_load,
    }
