"""SDPO (segment-level DPO) below the learner: multi-turn encoding, the segment mask and its loss.

A multi-turn side is encoded turn by turn with the chat template: the pieces must concatenate to the
template's rendering of the whole session in every family's layout, the scored tokens must be exactly
each assistant turn's text and its end-of-turn token, and ``segment_turns`` must cut after the K-th
assistant turn. The loss test uses the character tokenizer, whose ids a test can write down by hand, and
reference log-probs given as numbers, so the expected DPO losses are computed here from per-token
log-probs of one plain forward and hand-built masks.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
import torch

from selfplay.config.schema import LossConfig, TrainConfig
from selfplay.train.batches import Micro
from selfplay.train.data import encode, encode_pairs
from selfplay.train.objective import pair_objective, run_model, sequence_sums

HISTORY = [{"role": "system", "content": "You help neighbours settle small disputes politely."},
           {"role": "user", "content": "My neighbour parks in front of my garage every morning. How do I raise it?"}]
CHOSEN = [{"role": "assistant", "content": "Try a friendly chat: say you need the garage by 8 am."},
          {"role": "user", "content": "Good idea. What if they say there is nowhere else to park?"},
          {"role": "assistant", "content": "Offer to share the driveway on weekends."},
          {"role": "user", "content": "Thanks, I will talk to them tonight."},
          {"role": "assistant", "content": "Good luck."}]
REJECTED = [{"role": "assistant", "content": "Just call a tow truck."},
            {"role": "user", "content": "That seems harsh. I still have to live next to them."},
            {"role": "assistant", "content": "Then leave an angry note on the car."},
            {"role": "user", "content": "I don't think that will help."},
            {"role": "assistant", "content": "Whatever."}]


def table(chosen=CHOSEN, rejected=REJECTED, **extra) -> pa.Table:
    return pa.Table.from_pylist([{"prompt": json.dumps(HISTORY), "chosen": json.dumps(chosen),
                                  "rejected": json.dumps(rejected), "pair_id": "0:s-0", **extra}])


def spans(tok, ids: list[int], mask: list[bool]) -> list[str]:
    """The decoded runs of scored tokens."""
    out, run = [], []
    for i, m in zip(ids, mask):
        if m:
            run.append(i)
        elif run:
            out.append(tok.decode(run))
            run = []
    return out + ([tok.decode(run)] if run else [])


@pytest.mark.parametrize("family", ["char", "llama3", "qwen2", "qwen3", "mistral", "gemma", "phi3"])
def test_each_assistant_turn_is_scored_exactly_and_user_turns_are_context(family):
    from selfplay.models.families import family_corpus
    from selfplay.models.family_tokenizers import build_family_tokenizer
    from selfplay.models.tokenizer import build_tokenizer

    tok = build_tokenizer("char") if family == "char" else build_family_tokenizer(family, family_corpus())
    for k, kept in ((None, 5), (1, 1), (2, 3)):
        data = encode(table(), tok, ("chosen", "rejected"), max_prompt_length=1024, max_completion_length=1024,
                      segment_turns=k)
        for key, session in (("chosen", CHOSEN), ("rejected", REJECTED)):
            ids, mask = data.completions[key][0], data.masks[key][0]
            rendered = tok.apply_chat_template([*HISTORY, *session[:kept]], tokenize=False)
            assert data.prompts[0] + ids == tok(rendered, add_special_tokens=False)["input_ids"]  # exact boundaries
            replies = [m["content"] for m in session[:kept] if m["role"] == "assistant"]
            assert spans(tok, ids, mask) == [r + tok.eos_token for r in replies]


def test_single_turn_rows_beside_multi_turn_ones_score_every_completion_token(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = table().to_pylist() + [{"prompt": json.dumps(HISTORY), "chosen": "Talk to them.", "rejected": "Shout.",
                                   "pair_id": "0:s-1"}]
    data = encode_pairs(pa.Table.from_pylist(rows), tok, TrainConfig(max_prompt_length=400))
    assert data.masks["chosen"][1] == [True] * len(data.completions["chosen"][1])
    assert spans(tok, data.completions["chosen"][1], data.masks["chosen"][1]) == ["Talk to them.</s>"]


def char_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_segment_mask_changes_the_dpo_loss_by_the_second_turns_log_ratios(tiny_model_dir):
    """A two-segment session pair with hand-given reference sums: the policy's per-token log-probs come
    from one plain forward of each whole session, the masks are written by hand from the template
    (``<s><sys>..<u>..<a>reply</s><u>..<a>reply</s>``). segment_turns=1 sums the first reply, 2 both
    replies (never the user turn between), and 2 = all turns = session-level DPO."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cpu = torch.device("cpu")
    chosen, rejected = CHOSEN[:3], REJECTED[:3]  # two assistant turns each
    s, u, a, eos = (tok.convert_tokens_to_ids(t) for t in ("<sys>", "<u>", "<a>", "</s>"))
    prompt = [tok.bos_token_id, s, *char_ids(tok, HISTORY[0]["content"]), u, *char_ids(tok, HISTORY[1]["content"]), a]

    def by_hand(session):  # the session's tokens and a mask per assistant turn, from the template's layout
        first, user, second = (char_ids(tok, m["content"]) for m in session)
        ids = [*first, eos, u, *user, a, *second, eos]
        turn1 = [1] * (len(first) + 1) + [0] * (len(user) + 2 + len(second) + 1)
        turn2 = [0] * (len(first) + 1 + len(user) + 2) + [1] * (len(second) + 1)
        return ids, torch.tensor(turn1, dtype=torch.bool), torch.tensor(turn2, dtype=torch.bool)

    def per_token(ids: list[int]) -> torch.Tensor:  # log p of each completion token, one unpadded forward
        full = torch.tensor([prompt + ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=full).logits[0, :-1].double(), -1)
        return logp.gather(-1, full[0, 1:, None])[:, 0][len(prompt) - 1:]

    (c_ids, c1, c2), (r_ids, r1, r2) = by_hand(chosen), by_hand(rejected)
    pc, pr = per_token(c_ids), per_token(r_ids)
    ref = {"ref_chosen_logps": -180.0, "ref_rejected_logps": -150.0}  # hand-given reference sums
    beta = 0.1
    expected = {1: -math.log(1 / (1 + math.exp(-beta * ((pc[c1].sum() + 180) - (pr[r1].sum() + 150))))),
                2: -math.log(1 / (1 + math.exp(-beta * ((pc[c1 | c2].sum() + 180) - (pr[r1 | r2].sum() + 150)))))}
    pairs = table(chosen, rejected, **ref)
    got = {}
    for k in (1, 2, None):
        cfg = TrainConfig(max_prompt_length=400, loss=LossConfig(type="sigmoid", beta=beta, segment_turns=k))
        data = encode_pairs(pairs, tok, cfg)
        comp = data.completions["chosen"][0]
        assert data.prompts[0] == prompt and comp == c_ids[: len(comp)]  # K=1: cut after the first reply's eos
        assert len(comp) == (int(c1.nonzero().max()) + 1 if k == 1 else len(c_ids))
        for share, split in ((False, False), (True, False), (True, True)):
            with torch.no_grad():
                loss, stats = pair_objective(model, data, Micro((0,), (True,)), cfg.loss, tok.pad_token_id, cpu,
                                             share_prefix=share, split=split)
            got[k, share, split] = float(loss)
    for share, split in ((False, False), (True, False), (True, True)):
        assert got[1, share, split] == pytest.approx(expected[1], rel=1e-5)
        assert got[2, share, split] == pytest.approx(expected[2], rel=1e-5)
        assert got[None, share, split] == pytest.approx(expected[2], rel=1e-5)  # all turns = session-level
    # the known change: the second segment's log-ratio difference, and the user turn never counts
    margin2 = float(pc[c2].sum() - pr[r2].sum())
    assert expected[2] != pytest.approx(expected[1], abs=1e-3) and abs(margin2) > 0.1
    assert float(pc[c1 | c2].sum()) != pytest.approx(float(pc.sum()), abs=1e-3)


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_prefix_shared_forwards_score_the_same_assistant_tokens_with_the_same_gradients(family, tmp_path):
    """The shared-prompt KV cache (one forward or one per key) on multi-turn sides equals the plain
    forward: log-probs, scored-token counts and gradients."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.models.families import build_family

    path = build_family(tmp_path / family, family)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    rows = table().to_pylist() + [
        {"prompt": json.dumps(HISTORY[1:]), "chosen": json.dumps(CHOSEN[:3]), "rejected": "Call a tow truck.",
         "pair_id": "0:s-1"}]
    data = encode_pairs(pa.Table.from_pylist(rows), tok, TrainConfig(max_prompt_length=400,
                                                                     max_completion_length=400))
    results = {}
    for shared, split in ((False, True), (True, False), (True, True)):
        model.zero_grad()
        scored = run_model(model, data, [0, 1], ("chosen", "rejected"), tok.pad_token_id, torch.device("cpu"),
                           share_prefix=shared, split=split)
        logps, lengths = sequence_sums(scored)
        (logps * torch.arange(1.0, 5.0)).sum().backward()
        results[shared, split] = (logps.detach(), lengths, torch.cat([p.grad.flatten() for p in model.parameters()]))
    lp0, len0, g0 = results[False, True]
    assert len0.tolist() == [sum(data.masks[k][i]) for k in ("chosen", "rejected") for i in (0, 1)]
    assert len0[0] < len(data.completions["chosen"][0])  # user turns are not scored
    for key in ((True, False), (True, True)):
        lp, length, g = results[key]
        assert torch.equal(length, len0)
        assert lp == pytest.approx(lp0.tolist(), abs=2e-4)
        assert torch.allclose(g, g0, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(("k", "chosen", "message"), [
    (4, CHOSEN, r"pairs row 0 \(pair_id '0:s-0'\), column 'chosen': a segment longer than the session: "
                r"train.loss.segment_turns=4, but the completion has 3 assistant turn"),
    (None, [{"role": "user", "content": "hi"}, *CHOSEN], r"pairs row 0 .*column 'chosen': roles out of order"),
])
def test_bad_sessions_in_a_pairs_table_name_the_row(tiny_model_dir, k, chosen, message):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match=message):
        encode_pairs(table(chosen), tok, TrainConfig(loss=LossConfig(segment_turns=k)))


def test_segment_turns_is_a_pair_loss_setting():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="segment_turns: SDPO's segment is a pair loss setting"):
        LossConfig(type="kto", segment_turns=2)
    assert LossConfig(type="ipo", segment_turns=2).segment_turns == 2


def test_the_multi_turn_example_of_docs_data_md_prints_what_the_page_shows(capsys, monkeypatch):
    import re
    from pathlib import Path

    root = Path(__file__).parents[2]
    page = (root / "docs" / "data.md").read_text()
    section = page[page.index("## Multi-turn sessions (SDPO)"):]
    code, shown = re.search(r"```python\n(.*?)```\n\n```\n(.*?)```", section, re.S).groups()
    monkeypatch.chdir(root)
    exec(compile(code, "docs/data.md", "exec"), {})
    assert capsys.readouterr().out == shown


def test_kto_rows_of_multi_turn_pairs_keep_their_assistant_masks(tiny_model_dir):
    """KTO's unpaired view (and its mismatched KL rows) carries each side's mask along."""
    from transformers import AutoTokenizer

    from selfplay.train.data import kl_partners, kto_view

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = table().to_pylist() + [dict(table(CHOSEN[:3], REJECTED[:3]).to_pylist()[0], pair_id="0:s-1")]
    data = encode_pairs(pa.Table.from_pylist(rows), tok, TrainConfig(max_prompt_length=400))
    view, partner = kto_view(data, seed=0), kl_partners(2, 0)
    for i in range(2):
        for j, key in enumerate(("chosen", "rejected")):
            assert view.masks["completion"][2 * i + j] == data.masks[key][i]
            assert view.masks["kl"][2 * i + j] == data.masks[key][int(partner[i])]
