"""Tokenizers shaped like those of real model families: their special tokens and chat-template layout.

A tiny checkpoint of a family (``selfplay.models.families``) needs a tokenizer that behaves like the real
one where the pipeline depends on it: which special tokens exist, which of them ends a turn (the eos a
chat model stops on), whether the template writes a bos, how a system message is placed and what the
generation prompt looks like. The vocabulary itself is a small byte-level BPE trained in-process (no hub).

Choices:

* The templates are written here, in the shape of each family's published template, not copied:
  Llama-3 header tokens and ``<|eot_id|>``; ChatML for Qwen2/2.5 (a default system turn when none is
  given) and Qwen3 (no default system turn; ``enable_thinking=False`` writes an empty think block);
  Mistral ``[INST] ... [/INST]`` with the system text folded into the first user turn; Gemma turns
  (``user``/``model``, system text folded into the first user turn); Phi-3 ``<|user|>`` ... ``<|end|>``.
* ``eos`` is the token that ends an assistant turn (what a chat model stops on): ``<|eot_id|>``,
  ``<|im_end|>``, ``</s>``, ``<end_of_turn>``, ``<|end|>``. ``pad`` differs from eos, as the learner's
  masks require; Mistral, which has no pad token, pads with ``<unk>`` as its users do.
* Qwen has no bos token at all (``bos_token`` is ``None``): code that assumes one breaks here, which
  is the point. Phi-3's template writes no bos either.
* As with the project's own tokenizers, encoding adds no special tokens by itself; the template writes
  them, so ``tok(rendered, add_special_tokens=False)`` and ``apply_chat_template(tokenize=True)`` agree.
* An unknown role raises from the template, naming the role.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_ROLE_CHECK = ("{%- if m['role'] not in ['system', 'user', 'assistant'] %}"
               "{{ raise_exception('unknown chat role: ' ~ m['role']) }}{%- endif %}")

LLAMA3 = (
    "{{- bos_token }}"
    "{%- for m in messages %}" + _ROLE_CHECK +
    "{{- '<|start_header_id|>' ~ m['role'] ~ '<|end_header_id|>\\n\\n' ~ m['content'] | trim ~ '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

QWEN2 = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}" + _ROLE_CHECK +
    "{{- '<|im_start|>' ~ m['role'] ~ '\\n' ~ m['content'] ~ '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN3 = (
    "{%- for m in messages %}" + _ROLE_CHECK +
    "{{- '<|im_start|>' ~ m['role'] ~ '\\n' ~ m['content'] ~ '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# System text is folded into the first user turn (Mistral and Gemma have no system role of their own).
_FOLD_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system = messages[0]['content'] ~ '\\n\\n' %}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- set turns = messages %}{%- endif %}"
)

MISTRAL = (
    "{{- bos_token }}" + _FOLD_SYSTEM +
    "{%- for m in turns %}" + _ROLE_CHECK +
    "{%- if m['role'] == 'user' %}{{- '[INST] ' ~ (system if loop.first else '') ~ m['content'] ~ '[/INST]' }}"
    "{%- elif m['role'] == 'assistant' %}{{- m['content'] ~ eos_token }}"
    "{%- else %}{{ raise_exception('a system message is only allowed first') }}{%- endif %}"
    "{%- endfor %}"
)

GEMMA = (
    "{{- bos_token }}" + _FOLD_SYSTEM +
    "{%- for m in turns %}" + _ROLE_CHECK +
    "{%- if m['role'] == 'system' %}{{ raise_exception('a system message is only allowed first') }}{%- endif %}"
    "{{- '<start_of_turn>' ~ ('model' if m['role'] == 'assistant' else 'user') ~ '\\n'"
    " ~ (system if loop.first else '') ~ m['content'] | trim ~ '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

PHI3 = (
    "{%- for m in messages %}" + _ROLE_CHECK +
    "{{- '<|' ~ m['role'] ~ '|>\\n' ~ m['content'] ~ '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TokenizerSpec:
    """Special tokens (trained first, so they get the lowest ids, in this order) and the roles they play."""

    specials: tuple[str, ...]
    eos: str
    pad: str
    chat_template: str
    bos: str | None = None
    unk: str | None = None
    extra: tuple[str, ...] = field(default=())  # more special tokens (roles, think markers)


SPECS: dict[str, TokenizerSpec] = {
    "llama3": TokenizerSpec(
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|finetune_right_pad_id|>"),
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", chat_template=LLAMA3,
        extra=("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>")),
    "qwen2": TokenizerSpec(
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN2, extra=("<|im_start|>",)),
    "qwen3": TokenizerSpec(
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
        eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN3, extra=("<|im_start|>", "<think>", "</think>")),
    "mistral": TokenizerSpec(
        specials=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        bos="<s>", eos="</s>", pad="<unk>", unk="<unk>", chat_template=MISTRAL, extra=("[INST]", "[/INST]")),
    "gemma": TokenizerSpec(
        specials=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>", eos="<end_of_turn>", pad="<pad>", unk="<unk>", chat_template=GEMMA,
        extra=("<eos>", "<start_of_turn>")),
    "phi3": TokenizerSpec(
        specials=("<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        bos="<s>", eos="<|end|>", pad="<|endoftext|>", unk="<unk>", chat_template=PHI3,
        extra=("</s>", "<|system|>", "<|user|>", "<|assistant|>")),
}


def build_family_tokenizer(kind: str, corpus: Iterable[str], vocab_size: int = 512,
                           model_max_length: int = 512) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the special tokens and chat template of ``kind``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in SPECS:
        raise ValueError(f"unknown tokenizer family {kind!r}; expected one of {sorted(SPECS)}")
    spec = SPECS[kind]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(spec.specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(list(corpus), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad,
        unk_token=spec.unk, model_max_length=model_max_length, clean_up_tokenization_spaces=False,
    )
    tok.add_special_tokens({"additional_special_tokens": list(spec.extra)})
    tok.chat_template = spec.chat_template
    for token in spec.specials:  # every special token is one id, below the learned merges
        if tok.convert_tokens_to_ids(token) != spec.specials.index(token):  # pragma: no cover
            raise AssertionError(f"{kind}: special token {token} did not get id {spec.specials.index(token)}")
    return tok
