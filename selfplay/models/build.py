"""Build, save and load policies as ordinary Hugging Face model directories.

``build_policy`` writes what a real checkpoint has (``config.json``, ``model.safetensors``,
``generation_config.json``, tokenizer files with the chat template) plus ``selfplay_build.json`` (the
build arguments). Everything downstream loads it with ``from_pretrained(path)`` exactly like a real
checkpoint, so the same code path serves both.

Choices:

* Atomic: the directory is written under a temporary sibling name and renamed into place, so a crash
  never leaves a half-written model that later looks valid.
* Idempotent: building into a directory that already holds the same build (same ``selfplay_build.json``)
  returns it untouched; a different non-empty directory is an error unless ``overwrite=True``.
* Seeded: weights are initialised under ``torch.manual_seed(seed)`` inside ``fork_rng``, so the caller's
  global RNG state is not disturbed and the same seed gives identical weights.
* ``vocab_size == len(tokenizer)`` (no padding rows): a random-init model can then never sample an id
  that the tokenizer cannot decode.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from selfplay.atomic import replace_dir
from selfplay.models.presets import llama_config
from selfplay.models.tokenizer import _read_corpus, build_tokenizer

# torch and transformers are imported inside the functions that use them: `import selfplay.models` (the
# CLI, the driver's preflight) loads neither.

BUILD_INFO = "selfplay_build.json"


def build_policy(
    out_dir: Path | str,
    preset: str = "tiny",
    tokenizer: str = "char",
    seed: int = 0,
    corpus: list[str] | str | Path | None = None,
    *,
    bpe_vocab_size: int = 1024,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Build a randomly initialised Llama policy of ``preset`` with a ``tokenizer`` ("char" | "bpe").

    ``corpus`` trains the BPE tokenizer (strings or a text-file path; default: a built-in synthetic
    corpus). ``dtype`` is the saved weight dtype ("float32" | "bfloat16"). Returns ``out_dir``.
    """
    import torch

    out_dir = Path(out_dir)
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    if tokenizer == "bpe":
        corpus = _read_corpus(corpus)
    info = {
        "preset": preset,
        "tokenizer": tokenizer,
        "seed": seed,
        "dtype": dtype,
        "bpe_vocab_size": bpe_vocab_size if tokenizer == "bpe" else None,
        "corpus_sha256": _corpus_hash(corpus) if tokenizer == "bpe" else None,
    }
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        if _read_info(out_dir) == info:
            return out_dir
        raise FileExistsError(
            f"{out_dir} already exists and is not the same build ({info}); "
            "choose another directory or pass overwrite=True"
        )

    tok = build_tokenizer(tokenizer, corpus, vocab_size=bpe_vocab_size)
    config = llama_config(
        preset,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype=dtype,
    )
    model = _init_model(config, seed).to(getattr(torch, dtype))
    model.generation_config = _generation_config(tok)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")

    # Without overwrite the final rename fails if a non-empty out_dir appeared meanwhile.
    return replace_dir(out_dir, write, overwrite=overwrite)


def load_policy(path: Path | str, dtype: Any = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local Hugging Face model directory (built or real).

    ``dtype`` is passed to ``from_pretrained`` (``None``: the checkpoint's own dtype).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_dir(path)
    kwargs = {"local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", **kwargs)
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    return model, tok


def check_model_dir(path: Path | str) -> Path:
    """Return ``path`` if it looks like a HF causal-LM directory; raise naming the path otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"model path {path} is not a directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a Hugging Face model directory: config.json is missing")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"{path} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return path


def count_parameters(path_or_model: Any) -> int:
    """Number of parameters of a ``torch.nn.Module`` or of the model in a HF directory.

    For a directory the model is instantiated on the ``meta`` device: no weights are read.
    """
    import torch

    if isinstance(path_or_model, torch.nn.Module):
        return sum(p.numel() for p in path_or_model.parameters())
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path_or_model)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a Hugging Face model directory: config.json is missing")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _init_model(config: Any, seed: int) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def _generation_config(tok: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )


def _read_info(path: Path) -> dict | None:
    try:
        return json.loads((path / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return None


def _corpus_hash(docs: list[str]) -> str:
    h = hashlib.sha256()
    for doc in docs:
        h.update(doc.encode("utf-8") + b"\0")
    return h.hexdigest()
