"""Offline tokenizers: round trips, special-token ids, the compact chat template."""

from __future__ import annotations

import pytest

from selfplay.models import SPECIAL_TOKENS, build_tokenizer
from selfplay.models.tokenizer import CHARACTERS

USER_PROMPT = [{"role": "user", "content": "12+35="}]


@pytest.fixture(scope="module")
def char_tok():
    return build_tokenizer("char")


@pytest.fixture(scope="module")
def bpe_tok():
    corpus = ["12+35=47", "sort:3,1,2=1,2,3", "The model answers the question.", "héllo wörld ∑"] * 20
    return build_tokenizer("bpe", corpus=corpus, vocab_size=320)


def test_char_vocabulary_layout(char_tok):
    assert len(char_tok) == len(SPECIAL_TOKENS) + len(CHARACTERS) == 104
    assert char_tok.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(7))
    assert (char_tok.pad_token_id, char_tok.bos_token_id, char_tok.eos_token_id) == (0, 1, 2)
    assert char_tok.pad_token_id != char_tok.eos_token_id


def test_char_round_trip_one_token_per_character(char_tok):
    text = CHARACTERS + "37+48=85\n sort: 1 , 2"
    ids = char_tok(text)["input_ids"]
    assert len(ids) == len(text)  # no bos/eos added by encoding
    assert char_tok.decode(ids) == text
    assert char_tok("é")["input_ids"] == [char_tok.unk_token_id]


def test_special_tokens_are_single_tokens_in_text(char_tok):
    ids = char_tok("<s><u>1+2=<a>3</s>")["input_ids"]
    assert ids == [1, 5, char_tok.convert_tokens_to_ids("1"), char_tok.convert_tokens_to_ids("+"),
                   char_tok.convert_tokens_to_ids("2"), char_tok.convert_tokens_to_ids("="), 6,
                   char_tok.convert_tokens_to_ids("3"), 2]
    assert char_tok.decode(ids, skip_special_tokens=True) == "1+2=3"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_chat_template(kind, char_tok, bpe_tok):
    tok = char_tok if kind == "char" else bpe_tok
    text = tok.apply_chat_template(USER_PROMPT, add_generation_prompt=True, tokenize=False)
    assert text == "<s><u>12+35=<a>"
    ids = tok.apply_chat_template(USER_PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == tok(text)["input_ids"]  # same ids whichever way the prompt is encoded
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.convert_tokens_to_ids("<a>")
    convo = [{"role": "system", "content": "be brief"}, *USER_PROMPT, {"role": "assistant", "content": "47"}]
    assert tok.apply_chat_template(convo, tokenize=False) == "<s><sys>be brief<u>12+35=<a>47</s>"


def test_chat_template_rejects_unknown_role(char_tok):
    with pytest.raises(Exception, match="unknown chat role"):
        char_tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_bpe_round_trip_and_specials(bpe_tok):
    assert bpe_tok.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(7))
    assert 7 + 256 < len(bpe_tok) <= 320  # byte alphabet plus some merges
    for text in ["12+35=47", "The model answers.", "unseen ünïcode ✓ text\n\tok"]:
        ids = bpe_tok(text)["input_ids"]
        assert bpe_tok.unk_token_id not in ids
        assert bpe_tok.decode(ids) == text
    assert len(bpe_tok("12+35=47")["input_ids"]) < len("12+35=47")  # merges learned from the corpus


def test_bpe_corpus_from_file_and_errors(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(["abc abc abd", "12+35=47"] * 50), encoding="utf-8")
    tok = build_tokenizer("bpe", corpus=path, vocab_size=300)
    assert tok.decode(tok("abc 12")["input_ids"]) == "abc 12"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        build_tokenizer("bpe", corpus=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="non-empty list of strings"):
        build_tokenizer("bpe", corpus=[])
    with pytest.raises(ValueError, match="only used by 'bpe'"):
        build_tokenizer("char", corpus=["x"])
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
        build_tokenizer("wordpiece")
