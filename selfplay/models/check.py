"""Deep checks of a local model directory, cheap enough to run before any actor starts.

``check_model_dir`` in :mod:`selfplay.models.build` asks "is this a model directory at all";
:func:`model_dir_problems` asks "will it load and run": it reads ``config.json``, the safetensors
*headers* (never the tensor data), compares the tensor shapes with the model the config describes
(built on the ``meta`` device, so nothing is allocated) and the tokenizer's size with ``vocab_size``.

Choices:

* Problems are returned as ``"path: what is wrong"`` strings, so preflight can list every problem at
  once with the recipe field in front.
* A truncated file is found from its header alone: the header names the byte range of every tensor,
  so a file shorter than the last range is incomplete (a copy cut short, a full disk).
* Shapes are compared only for tensors both sides name (tied or renamed heads differ between
  checkpoints); a different shape is what makes loading fail with a long traceback later.
* ``pytorch_model.bin`` checkpoints are not opened (unpickling is neither cheap nor safe); only
  safetensors are checked in depth.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

# torch and transformers are imported inside the functions that use them: the driver's preflight imports
# this module, and most of its checks read files only.
MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def safetensors_header(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The tensor table of a safetensors file, or ``(None, problem)`` naming what is wrong with it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None, f"{path}: not a safetensors file (only {size} bytes)"
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER or 8 + length > size:
            return None, f"{path}: truncated or not a safetensors file (header of {length} bytes, file of {size})"
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None, f"{path}: the safetensors header is not valid JSON (a damaged file)"
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    if 8 + length + end > size:
        return None, (f"{path}: truncated: its header describes {8 + length + end} bytes, the file has {size} "
                      "(copy it again)")
    return tensors, None


def _weight_files(path: Path) -> tuple[list[Path], str | None]:
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        return [single], None
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            return [], f"{index}: not a valid safetensors index ({exc})"
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            return [], f"{path}: shard(s) {missing} named in {index.name} are missing"
        return [path / n for n in names], None
    if any(path.glob("*.bin")) or any(path.glob("*.safetensors")):
        return [], None  # another layout: loaders know it; nothing cheap to check here
    return [], f"{path}: no weights (model.safetensors, model.safetensors.index.json or *.bin)"


def _expected_shapes(config: Any, kind: str) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification
    with torch.device("meta"):
        model = auto.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def model_dir_problems(path: str | Path, kind: str = "causal_lm") -> list[str]:
    """Every reason ``path`` would fail to load or run as a ``kind`` ("causal_lm" | "classifier") model."""
    path = Path(path)
    cfg_file = path / "config.json"
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{cfg_file}: cannot be read as JSON ({exc})"]
    problems: list[str] = []
    files, problem = _weight_files(path)
    if problem:
        problems.append(problem)
    found: dict[str, tuple[int, ...]] = {}
    for file in files:
        tensors, problem = safetensors_header(file)
        if problem:
            problems.append(problem)
        for name, info in (tensors or {}).items():
            found[name] = tuple(info["shape"])
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001  (any loader failure is reported, with the file named)
        return [*problems, f"{cfg_file}: transformers cannot read it ({type(exc).__name__}: {exc})"]
    vocab = getattr(config, "vocab_size", None) or raw.get("vocab_size")
    if found:
        try:
            expected = _expected_shapes(config, kind)
        except Exception as exc:  # noqa: BLE001
            expected = {}
            problems.append(f"{cfg_file}: cannot build the model it describes ({type(exc).__name__}: {exc})")
        wrong = [f"{k} is {list(found[k])}, config.json implies {list(v)}"
                 for k, v in expected.items() if k in found and found[k] != v]
        if wrong:
            problems.append(f"{path}: weights do not match config.json: " + "; ".join(wrong[:3])
                            + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""))
    problems.extend(_tokenizer_problems(path, vocab))
    return problems


def _tokenizer_problems(path: Path, vocab_size: int | None) -> list[str]:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        return [f"{path}: the tokenizer cannot be loaded ({type(exc).__name__}: {exc})"]
    if vocab_size is not None and len(tok) > vocab_size:
        return [f"{path}: the tokenizer has {len(tok)} tokens but config.json vocab_size is {vocab_size}: "
                f"ids {vocab_size}..{len(tok) - 1} have no embedding row (vocab_size must be >= {len(tok)})"]
    return []
