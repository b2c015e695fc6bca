"""Policies and tokenizers built offline (no model hub): tiny Llama models in standard HF directories.

``build_policy`` writes a Hugging Face model directory that HF ``from_pretrained`` and vLLM load like any
real checkpoint; ``load_policy`` loads one (built or real). Presets and tokenizer choices are documented
in ``presets.py`` and ``tokenizer.py``. Importing this package imports neither torch nor transformers.
"""

from selfplay.models.build import build_policy, check_model_dir, count_parameters, load_policy
from selfplay.models.presets import PARAM_RANGES, PRESETS
from selfplay.models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer, default_corpus

__all__ = [
    "CHAT_TEMPLATE",
    "PARAM_RANGES",
    "PRESETS",
    "SPECIAL_TOKENS",
    "build_policy",
    "build_tokenizer",
    "check_model_dir",
    "count_parameters",
    "default_corpus",
    "load_policy",
]
