"""Tokenizers built offline: a fixed character vocabulary, or byte-level BPE trained in-process.

There is no model hub, so the policy's tokenizer is made here with the ``tokenizers`` library and wrapped
in ``transformers.PreTrainedTokenizerFast``; ``save_pretrained`` writes the ordinary files
(``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``) that HF and vLLM load.

Choices:

* Both kinds share the same seven special tokens, with the same ids 0-6:
  ``<pad>`` 0, ``<s>`` (bos) 1, ``</s>`` (eos) 2, ``<unk>`` 3 and the single-token chat-role markers
  ``<sys>`` 4, ``<u>`` 5, ``<a>`` 6. pad differs from eos, so padding masks never hide a real eos.
* The chat template is compact because the models are tiny and max lengths short:
  ``[{"role": "user", "content": "12+35="}]`` with ``add_generation_prompt=True`` renders as
  ``<s><u>12+35=<a>``, and an assistant turn renders as ``<a>{content}</s>`` (eos closes it).
* bos is written by the chat template, and encoding adds **no** special tokens by itself (no
  post-processor). So ``tok(rendered)`` (HF, vLLM ``generate``) and ``apply_chat_template(tokenize=True)``
  (HF, vLLM ``chat``) give the same ids, and bos never appears twice. Plain-text prompts get no bos.
* Character vocabulary: special tokens, then digits, ASCII letters, ASCII punctuation, space, newline and
  tab (104 tokens in all). Any other character encodes to ``<unk>``. Decoding concatenates (``Fuse`` decoder).
* BPE is byte-level (every string round-trips, no ``<unk>`` in practice), trained on a given corpus or on
  a small built-in synthetic one (``default_corpus``).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tokenizers and transformers load inside the builders: `import selfplay.models` needs neither
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SYSTEM, USER, ASSISTANT = "<sys>", "<u>", "<a>"
SPECIAL_TOKENS: list[str] = [PAD, BOS, EOS, UNK, SYSTEM, USER, ASSISTANT]
ROLE_MARKERS: dict[str, str] = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
CHARACTERS: str = string.digits + string.ascii_letters + string.punctuation + " \n\t"

CHAT_TEMPLATE: str = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}" + SYSTEM + "{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}" + ASSISTANT + "{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('unknown chat role: ' ~ m['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)

TOKENIZER_KINDS = ("char", "bpe")


def build_tokenizer(
    kind: str = "char",
    corpus: Iterable[str] | str | Path | None = None,
    vocab_size: int = 1024,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Build a tokenizer of ``kind`` ("char" or "bpe").

    ``corpus`` (bpe only): strings, or the path of a UTF-8 text file (one document per line); ``None``
    trains on ``default_corpus()``. ``vocab_size`` (bpe only) is the BPE target size including specials.
    """
    if kind == "char":
        if corpus is not None:
            raise ValueError("tokenizer 'char' has a fixed vocabulary; a corpus is only used by 'bpe'")
        backend = _char_backend()
    elif kind == "bpe":
        backend = _bpe_backend(_read_corpus(corpus), vocab_size)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
    return _wrap(backend, model_max_length)


def _char_backend():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own pre-token ([\s\S] also matches newlines), so WordLevel maps char -> id.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def _bpe_backend(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # trained first, so they get ids 0..6 like the char vocabulary
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def _wrap(backend, model_max_length: int) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # "1 , 2" must decode as written
    )
    tok.add_special_tokens({"additional_special_tokens": [SYSTEM, USER, ASSISTANT]})
    tok.chat_template = CHAT_TEMPLATE
    for name in ("pad", "bos", "eos", "unk"):
        want = SPECIAL_TOKENS.index(getattr(tok, f"{name}_token"))
        if getattr(tok, f"{name}_token_id") != want:  # pragma: no cover - guards the id layout above
            raise AssertionError(f"{name} token id {getattr(tok, f'{name}_token_id')} != {want}")
    return tok


def _read_corpus(corpus: Iterable[str] | str | Path | None) -> list[str]:
    if corpus is None:
        return default_corpus()
    if isinstance(corpus, str | Path):
        path = Path(corpus)
        if not path.is_file():
            raise FileNotFoundError(f"BPE corpus file not found: {path}")
        return path.read_text(encoding="utf-8").splitlines()
    docs = list(corpus)
    if not docs or not all(isinstance(d, str) for d in docs):
        raise ValueError("BPE corpus must be a non-empty list of strings (or a text file path)")
    return docs


def default_corpus(n: int = 4000, seed: int = 0) -> list[str]:
    """A small synthetic corpus: arithmetic, number lists and short sentences (for a BPE default)."""
    rng = random.Random(seed)
    words = [
        "the", "a", "model", "answer", "question", "sort", "list", "number", "sum", "of", "and", "is",
        "what", "please", "compute", "result", "it", "we", "you", "this", "that", "to", "in", "on",
        "for", "with", "are", "was", "be", "not", "yes", "no", "true", "false", "first", "then", "next",
    ]
    docs = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            a, b = rng.randint(0, 9999), rng.randint(0, 9999)
            op = rng.choice("+-*")
            result = a + b if op == "+" else a - b if op == "-" else a * b
            docs.append(f"{a}{op}{b}={result}")
        elif kind == 1:
            xs = [rng.randint(0, 999) for _ in range(rng.randint(2, 8))]
            docs.append(f"sort:{','.join(map(str, xs))}={','.join(map(str, sorted(xs)))}")
        else:
            sent = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            docs.append(sent.capitalize() + rng.choice(".?!"))
    return docs
