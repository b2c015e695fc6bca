"""Our DPO path, text -> tokens -> log-probs -> loss -> updated weights, against TRL 1.16's ``DPOTrainer``.

One start policy and one pairs table (chat prompts of about 300 tokens, chosen and rejected answers of
different lengths), one plain DPO round on each side: sigmoid loss, beta 0.1, fp32, dropout off, AdamW
(betas 0.9/0.999, eps 1e-8, weight decay 0), constant lr, no warm-up, gradient clipping at 5, one pair
per micro-batch and accumulation with a remainder (7 pairs: steps of 3, 3 and 1 at world size 1; of 4
and 3 at world size 2 x accumulation 2). Asserted (tolerances in ``trl_peer``): the tokens, the reference
log-probs against TRL's precomputed ones, every step's loss, pre-clip gradient norm, chosen and rejected
rewards and policy log-probs, and every final weight.

How the two are made to do the same thing:

* **Order.** Our plan (``batches.plan_round``) shuffles the order of optimizer steps, so the step with the
  remainder may come anywhere; HF's ``Trainer`` always ends an epoch with its short accumulation window.
  Our side runs its own plan with that step moved last (``trl_peer._last_partial_plan``), and TRL gets the
  pairs in exactly that order through its sequential sampler.
* **Reference.** Ours from ``Learner.compute_reference``, TRL's from ``precompute_ref_log_probs=True``,
  both on the start weights.
* **Tokens.** With the project's char tokenizer our encoding (chat-template prompt with the generation
  prompt, answer text, eos) equals TRL's (template rendering of prompt + assistant turn, split where it
  leaves the prompt): asserted as is. A ChatML template (the ``qwen2`` family) writes a newline *after*
  the eos that closes an assistant turn, and TRL trains on it; our text encoding stops at the eos (as a
  sampled answer does). That difference is legitimate and asserted; for the round itself our table then
  carries the template's tokens as ``chosen_token_ids``/``rejected_token_ids``, so both train on the
  same ids. Truncation: a total ``max_length`` cuts what TRL's ``keep_start`` cuts
  (``test_truncation_keeps_trls_tokens``); the rounds themselves cut nothing.
* **World size 2.** Ours runs two learner ranks (ZeRO-2) as plain processes (the class the Ray actors
  host). TRL runs at world size 1 with the same global batch (accumulation 4). A DPO loss is a mean over
  the pairs of the global batch; TRL under DDP would not give that with a remainder: accelerate's
  ``even_batches`` fills the short rank's batch with pairs from the start of the epoch (trained twice),
  so TRL at world size 2 is not the reference for a remainder step.

The comparison must fail when the path is broken: ``test_planted_bug_is_caught`` runs our side with a
shift, a prompt/completion boundary or a padding mask broken on purpose and asserts the comparison
raises. (A boundary one token early adds the same prompt token's log-prob to chosen and rejected, which
cancels in the DPO margin: the gradient and the weights stay TRL's, and only the log-prob values, the
reference columns first, show it.)

A finding, asserted in ``test_micro_batch_split_changes_trls_step_not_ours``: with a remainder, TRL's
step is a mean of micro-batch means, ours the mean over the step's pairs (the DPO loss of the batch).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from trl_peer import CLIP, Round, chat_table, compare, make_pairs, run_ours, run_trl, template_completions, train_config

pytestmark = pytest.mark.slow

N_PAIRS = 7


@dataclass
class Case:
    rows: list[dict]
    ours: Round
    theirs: Round


def flat(order: list[list[int]]) -> list[int]:
    return [row for step in order for row in step]


@pytest.fixture(scope="module")
def nano(tiny_model_dir, tmp_path_factory) -> Case:
    """Ours, then TRL (in that order: TRL takes our step order, and our single rank's process group is
    gone before TRL's accelerate looks for one), world size 1, accumulation 3."""
    rows = make_pairs(N_PAIRS)
    ours = run_ours(tiny_model_dir, chat_table(rows), train_config(3, zero_stage=0))
    theirs = run_trl(tiny_model_dir, rows, flat(ours.order), 3, tmp_path_factory.mktemp("trl_ws1"))
    return Case(rows, ours, theirs)


def _start_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _check_round(case: Case, steps: list[int], model_dir: Path) -> None:
    assert [len(s) for s in case.ours.order] == steps
    assert case.ours.tokens == case.theirs.tokens
    prompt_lengths = [len(p) for p, _, _ in case.ours.tokens.values()]
    assert min(prompt_lengths) >= 250, prompt_lengths
    assert all(len(c) != len(r) for _, c, r in case.ours.tokens.values())
    start = _start_weights(model_dir)
    compare(case.ours, case.theirs, start)
    norms = [s["grad_norm"] for s in case.theirs.steps]
    assert min(norms) < CLIP < max(norms), norms  # clipping acted on some steps, not on all
    losses = [s["loss"] for s in case.theirs.steps]
    assert losses[-1] < 0.5 * losses[0], losses  # a round that learned, not weights that hardly moved


def test_ws1_round_equals_trl(nano, tiny_model_dir):
    _check_round(nano, [3, 3, 1], tiny_model_dir)


def test_qwen2_round_equals_trl(tmp_path):
    """Another family (tied embeddings, q/k/v biases, no bos, ChatML, BPE): our text encoding differs from
    TRL's only by the newline ChatML writes after the closing eos; with the template's ids the rounds agree."""
    from transformers import AutoTokenizer

    from selfplay.models.families import build_family
    from selfplay.train.data import encode_pairs

    model_dir = build_family(tmp_path / "qwen2", "qwen2", seed=0)
    rows = make_pairs(N_PAIRS, prompt_chars=380)
    cfg = train_config(3, zero_stage=0)
    from_text = encode_pairs(chat_table(rows), AutoTokenizer.from_pretrained(model_dir), cfg)
    ids_rows = template_completions(model_dir, rows)
    ours = run_ours(model_dir, chat_table(ids_rows), cfg)
    theirs = run_trl(model_dir, rows, flat(ours.order), 3, tmp_path / "trl")
    newline = theirs.tokens[0][1][-1]
    for row, prompt, chosen, rejected in zip(from_text.rows, from_text.prompts, from_text.completions["chosen"],
                                             from_text.completions["rejected"]):
        assert prompt == theirs.tokens[int(row)][0]
        assert [*chosen, newline] == theirs.tokens[int(row)][1]
        assert [*rejected, newline] == theirs.tokens[int(row)][2]
    _check_round(Case(ids_rows, ours, theirs), [3, 3, 1], model_dir)


def test_truncation_keeps_trls_tokens(nano, tiny_model_dir):
    """A total ``max_length`` cuts what TRL 1.16's collator cuts with ``truncation_mode="keep_start"``: the
    prompt whole, each answer's tail (both sides per sequence, the answer's mask with it). Where a prompt
    alone passes the limits the two differ by design: TRL drops the pair, ours keeps the prompt's last
    ``max_prompt_length`` tokens (and ``max_length`` must exceed ``max_prompt_length``)."""
    from transformers import AutoTokenizer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from selfplay.train.data import encode_pairs

    limit = 380
    cfg = train_config(3, zero_stage=0).model_copy(update={"max_prompt_length": 360, "max_length": limit})
    ours = encode_pairs(chat_table(nano.rows), AutoTokenizer.from_pretrained(tiny_model_dir), cfg)
    assert ours.stats["truncated"] == N_PAIRS and ours.stats["dropped"] == 0
    collate = DataCollatorForPreference(pad_token_id=0, max_length=limit, truncation_mode="keep_start")
    for i, row in enumerate(ours.rows):
        prompt, chosen, rejected = nano.theirs.tokens[int(row)]
        batch = collate([{"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}])
        for k, key in enumerate(("chosen", "rejected")):
            n = int(batch["attention_mask"][k].sum())
            assert batch["input_ids"][k, :n].tolist() == ours.prompts[i] + ours.completions[key][i]
            assert int(batch["completion_mask"][k].sum()) == len(ours.completions[key][i])


# ------------------------------------------------------------------------------------------ planted bugs
def _bugged_sums(real, bug: str, calls: list):
    """``objective.sequence_sums`` with a planted bug applied to what it scores."""
    from selfplay.train.objective import Scored, ScoredByKey

    def broken(scored):
        if isinstance(scored, ScoredByKey):
            return ScoredByKey(tuple(broken(p) for p in scored.parts), scored.tokens)
        labels, mask = scored.labels, scored.mask
        if bug == "shift":  # each logit scores the token after its target
            labels = torch.cat([labels[:, 1:], labels[:, -1:]], dim=1)
        elif bug == "padding_in_mask":  # the completion mask runs on over the padding to the end of the row
            mask = mask.cumsum(1) > 0
        calls.append(bug)
        return Scored(scored.logits, labels, mask, scored.order, scored.tokens)

    return lambda scored: real(broken(scored))


def _boundary_off_by_one(real, calls: list):
    """``encode_pairs`` whose loss mask takes in the prompt's last token (the boundary one token early)."""

    def encode(*args, **kwargs):
        calls.append("boundary")
        data = real(*args, **kwargs)
        data.completions = {k: [p[-1:] + c for p, c in zip(data.prompts, cs)] for k, cs in data.completions.items()}
        data.prompts = [p[:-1] for p in data.prompts]
        return data

    return encode


@pytest.mark.parametrize("bug", ["shift", "padding_in_mask", "prompt_token_in_mask"])
def test_planted_bug_is_caught(nano, tiny_model_dir, monkeypatch, bug):
    import selfplay.train.learner as learner_mod
    import selfplay.train.objective as objective
    import selfplay.train.reference as reference

    calls: list = []
    if bug == "prompt_token_in_mask":
        monkeypatch.setattr(learner_mod, "encode_pairs", _boundary_off_by_one(learner_mod.encode_pairs, calls))
    else:
        for module in (objective, reference):
            monkeypatch.setattr(module, "sequence_sums", _bugged_sums(objective.sequence_sums, bug, calls))
    bugged = run_ours(tiny_model_dir, chat_table(nano.rows), train_config(3, zero_stage=0))
    assert bugged.order == nano.ours.order
    assert calls  # the planted bug was on the path that ran
    with pytest.raises(AssertionError):
        compare(bugged, nano.theirs, _start_weights(tiny_model_dir))


# ------------------------------------------------------------------------------------------ world size 2
@pytest.fixture(scope="module")
def global4(tiny_model_dir, tmp_path_factory) -> Case:
    """Steps of 4 and 3 pairs: ours at world size 1 with micro-batches of 2 (2 + 2, then 2 + 1), TRL with
    one pair per micro-batch and accumulation 4 (the layout that takes the exact mean over pairs)."""
    rows = make_pairs(N_PAIRS)
    ours = run_ours(tiny_model_dir, chat_table(rows), train_config(2, zero_stage=0, micro_batch_size=2))
    theirs = run_trl(tiny_model_dir, rows, flat(ours.order), 4, tmp_path_factory.mktemp("trl_g4"))
    return Case(rows, ours, theirs)


def test_ws2_zero2_round_equals_trl(global4, tiny_model_dir, tmp_path):
    """Two ranks (ZeRO-2, one pair per micro-batch, accumulation 2) against TRL at world size 1 with
    accumulation 4 (see the module docstring): a step of 4 pairs, then one of 3 and a weight-0 filler."""
    import pickle

    import pyarrow.parquet as pq

    from selfplay.train.engine import free_port

    pq.write_table(chat_table(global4.rows), tmp_path / "pairs.parquet")
    cfg = train_config(2, zero_stage=2)
    port, out = free_port(), tmp_path / "rank0.pkl"
    here = str(Path(__file__).parent)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import trl_peer; "
            "trl_peer.rank_main(int(sys.argv[2]), 2, int(sys.argv[3]), *sys.argv[4:])")
    procs = [subprocess.Popen([sys.executable, "-c", code, here, str(rank), str(port), str(tiny_model_dir),
                               str(tmp_path / "pairs.parquet"), cfg.model_dump_json(), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{log[-4000:]}"
    ours = pickle.loads(out.read_bytes())
    assert ours.order == global4.ours.order  # the same steps as the world-size-1 layout (the plan depends on G)
    _check_round(Case(global4.rows, ours, global4.theirs), [4, 3], tiny_model_dir)


def test_micro_batch_split_changes_trls_step_not_ours(global4, tiny_model_dir, tmp_path):
    """Finding: with a remainder, TRL's step depends on how it is cut into micro-batches; ours does not.

    TRL takes the mean loss of each micro-batch and divides by the number of micro-batches, so the short
    step (micro-batches of 2 and 1) weights its lone pair twice as much as each of the other two. A DPO
    loss is the mean over the pairs of the step: ours divides the summed loss by the step's pair count,
    so micro-batches of 2 give exactly TRL's one-pair-per-micro-batch round (asserted in full), while
    TRL's own micro-batches of 2 agree on the full first step and not on the short second one.
    """
    _check_round(global4, [4, 3], tiny_model_dir)
    split = run_trl(tiny_model_dir, global4.rows, flat(global4.ours.order), 2, tmp_path, micro_batch_size=2)
    exact = global4.theirs.steps
    assert split.steps[0]["loss"] == pytest.approx(exact[0]["loss"], rel=1e-5)
    assert split.steps[0]["grad_norm"] == pytest.approx(exact[0]["grad_norm"], rel=1e-4)
    assert split.steps[1]["loss"] != pytest.approx(exact[1]["loss"], rel=1e-2)
    assert split.steps[1]["grad_norm"] != pytest.approx(exact[1]["grad_norm"], rel=1e-2)
