"""Reward-model judge: a Hugging Face sequence-classification model (one logit) scores (prompt, response).

Choices:

* (prompt, response) is rendered with the RM tokenizer's chat template when it has one (the prompt's
  messages, or one user message, then the response as the assistant turn), and as ``prompt + response``
  otherwise. Templated text is tokenized without extra special tokens (the template writes them).
* Truncation is from the left, so the end of the response (where the RM reads its score, the last
  non-pad token) always survives; padding is on the right and needs ``config.pad_token_id``, which
  ``load_model_and_tokenizer`` fills in from the tokenizer (pad, else eos) when a checkpoint lacks it.
* Texts are scored in batches sorted by length (less padding), results returned in input order.
* ``SequenceScorer`` is plain in-process code; ``actors/judge.py`` hosts the same judge in a Ray actor.
* ``build_reward_model`` makes an RM from a causal-LM policy: its backbone weights and tokenizer with a
  freshly (seeded) initialised score head; ``train_rm.py`` fits it on pairs.
* **No judging with a random head.** A judge loads only a checkpoint whose architecture is a
  ``*ForSequenceClassification`` and whose files hold every score-head weight; a directory that
  ``build_reward_model`` wrote (``selfplay_rm.json`` says ``score_head: random``) is refused too, until
  ``train_rm`` has fitted it. The error names the checkpoint and what is missing. Only
  ``build_reward_model``/``train_rm`` ask for a new head (``new_head=True``).
* **PairRM is not supported.** llm-blender's PairRM is a custom DeBERTa class with its own head and
  input format (source and two candidates between special markers, scored by llm-blender's code); it
  cannot be loaded as a sequence-classification model, and is refused by name rather than given a
  random head. Use a one-label model fitted on ``render_triple`` text, or an ``llm_judge``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfplay.judges.base import PromptGroup, Scores, prompt_text
from selfplay.records import Prompt

# torch and transformers are imported inside the functions that use them, so that importing
# selfplay.judges (whose factory names this module) loads neither.


def render_response(tokenizer: Any, prompt: Prompt, response: str) -> str:
    """The text an RM scores for (prompt, response)."""
    if getattr(tokenizer, "chat_template", None):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}], tokenize=False
        )
    return prompt_text(prompt) + response


HEAD_FILE = "selfplay_rm.json"
"""Written beside a reward model by ``build_reward_model`` (``score_head: random``) and ``train_rm``."""


class UntrainedHeadError(ValueError):
    """A judge was pointed at a checkpoint whose score head was never trained (or is not there)."""


def _is_pairrm(path: Path, config: Any) -> bool:
    names = [*(config.architectures or []), str(getattr(config, "model_type", ""))]
    return (path / "ranker_config.json").is_file() or any("pairrm" in n.lower() for n in names)


def check_trained_head(path: Path, config: Any) -> None:
    """Refuse (``UntrainedHeadError``) a checkpoint a judge would score with a random head."""
    if _is_pairrm(path, config):
        raise UntrainedHeadError(
            f"{path}: PairRM (llm-blender's custom DeBERTa ranker) is not supported: its head and its "
            "source/candidate input format need llm-blender's own code, and loading it as a sequence "
            "classifier would score with a random head. Use a one-label *ForSequenceClassification model "
            "fitted on selfplay.judges.pairwise.render_triple text (selfplay train-rm), or an llm_judge")
    archs = list(config.architectures or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise UntrainedHeadError(
            f"{path}: architectures {archs or 'unset'} have no trained score head (a judge needs a "
            "*ForSequenceClassification checkpoint); fit one first: selfplay train-rm PAIRS --base "
            f"{path} --out DIR")
    marker = path / HEAD_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("score_head") == "random":
        raise UntrainedHeadError(
            f"{path}: its score head is the random one build_reward_model initialised ({HEAD_FILE} says "
            "score_head: random); train it first (selfplay train-rm PAIRS --base DIR --out DIR)")


def load_model_and_tokenizer(path: str | Path, num_labels: int = 1, seed: int = 0,
                             new_head: bool = False) -> tuple[Any, Any]:
    """A sequence-classification model and its tokenizer, with pad token and ``config.pad_token_id`` set.

    ``new_head=False`` (judges): the checkpoint must carry a trained score head, else
    ``UntrainedHeadError`` names the checkpoint and the missing weights. ``new_head=True``
    (``build_reward_model``, ``train_rm``): a causal LM gets a freshly seeded head.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if not new_head:
        check_trained_head(path, config)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    fresh = not any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    verbosity = hf_logging.get_verbosity()
    if fresh:  # the "lm_head unexpected / score missing" load report is expected here
        hf_logging.set_verbosity_error()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, local_files_only=True, dtype="auto", output_loading_info=True
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing and not new_head:
        raise UntrainedHeadError(f"{path}: the checkpoint lacks weights {missing[:8]}"
                                 f"{' ...' if len(missing) > 8 else ''}; a judge would score with random ones")
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


class SequenceScorer:
    """Batched logits of a one-label sequence-classification model for already rendered texts."""

    def __init__(self, path: str | Path, batch_size: int = 16, max_length: int = 1024) -> None:
        import torch

        self.path = str(path)
        self.model, self.tokenizer = load_model_and_tokenizer(path)
        self.tokenizer.truncation_side = "left"
        self.tokenizer.padding_side = "right"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))

    def logits(self, texts: list[str], add_special_tokens: bool | None = None) -> list[float]:
        import torch

        special = not self.templated if add_special_tokens is None else add_special_tokens
        order = sorted(range(len(texts)), key=lambda k: len(texts[k]))
        out: list[float] = [0.0] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[k] for k in idx], padding=True, truncation=True,
                                       max_length=self.max_length, add_special_tokens=special,
                                       return_tensors="pt").to(self.device)
                values = self.model(**batch).logits[:, 0].float().cpu().tolist()
                for k, v in zip(idx, values):
                    out[k] = v
        return out


class RewardModelJudge:
    """Scores every response with a reward model: the RM's logit for (prompt, response)."""

    def __init__(self, path: str | Path, batch_size: int = 16, max_length: int = 1024) -> None:
        self.scorer = SequenceScorer(path, batch_size=batch_size, max_length=max_length)
        self.name = f"reward_model:{Path(path).name}"

    def score(self, groups: list[PromptGroup]) -> Scores:
        tok = self.scorer.tokenizer
        texts = [render_response(tok, g.prompt, r) for g in groups for r in g.responses]
        flat = self.scorer.logits(texts)
        out: Scores = []
        for g in groups:
            out.append(list(flat[: len(g.responses)]))
            flat = flat[len(g.responses):]
        return out


def build_reward_model(policy_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """A one-label ``*ForSequenceClassification`` from a causal-LM policy's backbone and tokenizer, with
    a seeded random score head, saved (atomically) as a Hugging Face directory. Returns ``out_dir``."""
    model, tok = load_model_and_tokenizer(policy_dir, seed=seed, new_head=True)
    marker = json.dumps({"score_head": "random", "seed": seed, "base": str(policy_dir)}, indent=2) + "\n"
    return save_model_dir(model, tok, out_dir, extra={HEAD_FILE: marker})


def save_model_dir(model: Any, tokenizer: Any, out_dir: str | Path,
                   extra: dict[str, str] | None = None) -> Path:
    """Write model + tokenizer (+ ``extra`` text files) under a temporary sibling and rename it into place
    (replacing ``out_dir``)."""
    from selfplay.atomic import replace_dir

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)

    return replace_dir(Path(out_dir), build)
