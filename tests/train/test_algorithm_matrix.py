"""The algorithm matrix: every algorithm on the menu runs a short real round through the real learner.

Each case builds the table its recipe would produce (judged pairs with ODPO offsets, SPIN's reference
pairs, offline pairs, sDPO chunks, SDPO's multi-turn sessions), trains a few optimizer steps on a nano
Llama and checks that every step's loss is finite and that the policy's chosen-minus-rejected log-prob
margin rose (SFT: the target's log-prob rose; SDPO: the margin over its segment). The batch shape is
micro-batch 1 with 4 accumulation steps on 5 pairs, so every epoch ends with weight-0 filler
micro-batches (KTO's 10 rows give 2 per epoch). W=2 with ZeRO-2 (real Ray actors on gloo) runs the
cases where ranks matter: KTO's reference point is averaged over both ranks, which the last test
checks against the same step computed in one micro-batch on one rank.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
import torch
from train_helpers import toy_pairs

from selfplay.config.schema import LossConfig, PairingConfig, TrainConfig
from selfplay.losses import LOSS_PARAMS
from selfplay.pairs import build_pairs
from selfplay.tasks.pairs import PairsTask

pytestmark = pytest.mark.slow

SHAPE = dict(learning_rate=2e-3, warmup_ratio=0.0, lr_schedule="constant", epochs=3, micro_batch_size=1,
             gradient_accumulation_steps=4, length_grouping="random")
SCORING = TrainConfig(**SHAPE)  # sigmoid: only used to read the policy's log-probs
N_PAIRS = 5


def chat(text: str) -> str:
    return json.dumps([{"role": "user", "content": text}])


def judged_pairs(strategy: str = "best_worst") -> pa.Table:
    """Pairs built from a judged table with graded scores (a partial-credit verifier's), as the loop does."""
    rows = []
    for i in range(N_PAIRS):
        samples = [("ab" * (2 + i % 2), 1.0), ("abz", 0.5 + 0.1 * (i % 3)), ("z" * (3 + i), 0.1 * (i % 2))]
        for k, (text, score) in enumerate(samples):
            rows.append({"prompt_id": f"p{i}", "prompt": chat(f"{i}+{2 * i}="), "reference": "ab" * 3,
                         "sample_index": k, "response": text, "response_token_ids": None, "score": score,
                         "iteration": 0, "policy_version": 0, "judge": "verifier"})
    cfg = PairingConfig(max_pairs_per_prompt=1)
    pairs, _ = build_pairs(pa.Table.from_pylist(rows), cfg, strategy)
    return pairs


def offline_task(tmp_path, chunks: int | None = None) -> PairsTask:
    rows = [{"prompt": f"{i}*3=", "chosen": "ab" * (2 + i % 2), "rejected": "z" * (3 + i % 4)} for i in range(11)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return PairsTask(path, eval_fraction=0.1, split_seed=0, chunks=chunks)


def margins(group, table: pa.Table, scoring: TrainConfig = SCORING) -> torch.Tensor:
    """Policy log p(chosen) - log p(rejected) per pair, under the weights held now."""
    scored = group.compute_reference(table, cfg=scoring)
    return torch.tensor(scored.column("ref_chosen_logps").to_pylist()) - torch.tensor(
        scored.column("ref_rejected_logps").to_pylist())


def preference_round(group, model_dir, loss: LossConfig, table: pa.Table, **shape) -> dict:
    cfg = TrainConfig(**{**SHAPE, **shape}, loss=loss)
    group.reload(model_dir, cfg)
    scoring = SCORING.model_copy(update={"loss": LossConfig(segment_turns=loss.segment_turns)})  # SDPO: its segment
    before = margins(group, table, scoring)
    summary = group.train_round(group.compute_reference(table, cfg=cfg), cfg)
    gain = float((margins(group, table, scoring) - before).mean())
    assert summary["losses"] and all(math.isfinite(x) for x in summary["losses"]), summary["losses"]
    assert gain > 0, f"{loss.type}: the chosen-rejected margin fell by {-gain:.4g} nats"
    return summary


# odpo and soft sppo read per-pair columns from the judge (offsets, win probabilities): their own tests.
PAIR_CASES = {name: LossConfig(type=name) for name in sorted(LOSS_PARAMS) if name not in ("odpo", "sppo")}
PAIR_CASES.update({"kto": LossConfig(type="kto"),
                   "tdpo1": LossConfig(type="tdpo", params={"variant": 1}),
                   "tdpo2": LossConfig(type="tdpo", params={"variant": 2})})


@pytest.fixture(scope="module")
def w1(tiny_model_dir):
    from actors.learner import LocalLearner

    group = LocalLearner.start(tiny_model_dir, SCORING)
    yield group
    group.shutdown()


@pytest.mark.parametrize("name", sorted(PAIR_CASES))
def test_every_loss_learns_at_micro_batch_1_with_filler_micro_batches(w1, tiny_model_dir, name):
    summary = preference_round(w1, tiny_model_dir, PAIR_CASES[name], toy_pairs(N_PAIRS, seed=1))
    steps_per_epoch = 3 if name == "kto" else 2  # ceil(10 rows / 4) and ceil(5 pairs / 4): fillers pad both
    assert summary["steps"] == 3 * steps_per_epoch


def test_odpo_with_offsets_derived_from_judge_scores(w1, tiny_model_dir):
    pairs = judged_pairs()
    offsets = pairs.column("offset").to_pylist()
    assert all(o is not None and math.isfinite(o) for o in offsets) and len(set(offsets)) > 1
    preference_round(w1, tiny_model_dir, LossConfig(type="odpo", params={"alpha": 1.0}), pairs)


def test_spin_recipe_settings(w1, tiny_model_dir):
    """SPIN: the sft judge's reference pairs (chosen = the SFT answer, no token ids), sigmoid, beta 0.1."""
    pairs = judged_pairs("reference")
    assert pairs.column("chosen_token_ids").null_count == pairs.num_rows
    preference_round(w1, tiny_model_dir, LossConfig(type="sigmoid", beta=0.1), pairs)


def test_sppo_recipe_settings(w1, tiny_model_dir):
    """SPPO (hard labels) as recipes/sppo_pairwise.yaml sets it: sppo_hard, beta 0.001, judged best/worst pairs."""
    preference_round(w1, tiny_model_dir, LossConfig(type="sppo_hard", beta=0.001), judged_pairs())


def test_soft_sppo_on_the_judges_win_probabilities(w1, tiny_model_dir):
    """Soft SPPO (recipes/sppo_pairwise.yaml's loss): each pair carries its samples' win probabilities."""
    pairs = toy_pairs(N_PAIRS, seed=1)
    pairs = pairs.append_column("chosen_score", pa.array([0.8, 0.7, 0.9, 0.6, 0.75]))
    pairs = pairs.append_column("rejected_score", pa.array([0.3, 0.2, 0.4, 0.35, 0.1]))
    preference_round(w1, tiny_model_dir, LossConfig(type="sppo", beta=0.1), pairs)


def test_offline_pairs(w1, tiny_model_dir, tmp_path):
    preference_round(w1, tiny_model_dir, LossConfig(type="sigmoid"), offline_task(tmp_path).pairs_table(0))


def test_stepwise_sdpo_trains_chunks_in_turn_against_the_previous_model(w1, tiny_model_dir, tmp_path):
    task = offline_task(tmp_path, chunks=2)
    cfg = TrainConfig(**SHAPE, loss=LossConfig(type="sigmoid"))
    w1.reload(tiny_model_dir, cfg)
    for k in range(2):
        chunk = task.pairs_table(k)
        before = margins(w1, chunk)
        with_ref = w1.compute_reference(chunk, cfg=cfg)  # reference: previous = the weights held now
        assert torch.allclose(torch.tensor(with_ref.column("ref_chosen_logps").to_pylist())
                              - torch.tensor(with_ref.column("ref_rejected_logps").to_pylist()), before, atol=1e-5)
        summary = w1.train_round(with_ref, cfg)
        assert all(math.isfinite(x) for x in summary["losses"])
        assert float((margins(w1, chunk) - before).mean()) > 0


def test_segment_level_sdpo_on_multi_turn_sessions(w1, tiny_model_dir):
    """SDPO (Kong et al. 2025): the shipped social-agent sessions, a 2-turn segment from the first
    difference; the margin over the segment's assistant tokens rises (any pair loss takes the segment)."""
    task = PairsTask("docs/examples/multiturn_prefs.jsonl", eval_fraction=0.0, segment_turns=2)
    pairs = task.pairs_table(0).slice(0, N_PAIRS)
    assert all(json.loads(c)[1]["role"] == "user" for c in pairs.column("chosen").to_pylist())  # multi-turn sides
    preference_round(w1, tiny_model_dir, LossConfig(type="sigmoid", segment_turns=2), pairs,
                     max_prompt_length=320, max_completion_length=320)


def test_sft_round(w1, tiny_model_dir):
    rows = [{"prompt": chat(f"{i}+{i}="), "reference": "ab" * (2 + i % 2)} for i in range(N_PAIRS)]
    cfg = TrainConfig(**SHAPE)
    w1.reload(tiny_model_dir, cfg)
    targets = pa.Table.from_pylist([{"prompt": r["prompt"], "chosen": r["reference"], "rejected": "z"} for r in rows])
    before = w1.compute_reference(targets, cfg=SCORING).column("ref_chosen_logps").to_pylist()
    summary = w1.sft_round(rows, cfg)
    after = w1.compute_reference(targets, cfg=SCORING).column("ref_chosen_logps").to_pylist()
    assert all(math.isfinite(x) for x in summary["losses"]) and summary["steps"] == 3 * 2
    assert sum(after) > sum(before)


# ------------------------------------------------------------------------------------ two ranks, ZeRO-2
@pytest.fixture
def w2(learner_groups):
    """The tier's shared 2-rank group (``conftest.py``); every test here reloads it with its own config."""
    return learner_groups()


@pytest.mark.parametrize("name", ["kto", "aot", "sigmoid", "odpo"])
def test_two_ranks_zero2(w2, tiny_model_dir, name):
    table = judged_pairs() if name == "odpo" else toy_pairs(N_PAIRS, seed=1)
    loss = LossConfig(type=name, params={"alpha": 1.0} if name == "odpo" else {})
    preference_round(w2, tiny_model_dir, loss, table, zero_stage=2, gradient_accumulation_steps=2)


def test_kto_reference_point_is_averaged_over_the_whole_step_across_ranks(w1, w2, tiny_model_dir):
    """8 KTO rows in one step: 2 ranks x 2 micro-batches of 2 rows == 1 rank x 1 micro-batch of 8 rows.

    With a per-micro-batch, per-rank z0 (clamped each time) the two gave different losses.
    """
    table = toy_pairs(4, seed=2)
    shape = dict(epochs=1, length_grouping="random")
    split = TrainConfig(**{**SHAPE, **shape, "micro_batch_size": 2, "gradient_accumulation_steps": 2},
                        zero_stage=2, loss=LossConfig(type="kto"))
    whole = TrainConfig(**{**SHAPE, **shape, "micro_batch_size": 8, "gradient_accumulation_steps": 1},
                        loss=LossConfig(type="kto"))
    losses = []
    for group, cfg in ((w2, split), (w1, whole)):
        group.reload(tiny_model_dir, cfg)
        # a reference that is not the policy, so z0 is not 0 on every row
        ref = group.compute_reference(table, cfg=cfg)
        shifted = {c: pa.array([v + (0.7 if j % 3 else -0.9) for j, v in enumerate(ref.column(c).to_pylist())])
                   for c in ("ref_kl_chosen_logps", "ref_kl_rejected_logps")}
        for c, col in shifted.items():
            ref = ref.set_column(ref.column_names.index(c), c, col)
        summary = group.train_round(ref, cfg)
        assert summary["steps"] == 1
        losses.append(summary["loss_first"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_the_logged_drift_is_named_for_what_it_measures(w1, tiny_model_dir):
    """The loop's per-round number over the rejected samples is their log-ratio drift, not a 'kl'."""
    from selfplay.loop.stages import rejected_drift

    cfg = TrainConfig(**SHAPE, loss=LossConfig(type="sigmoid"))
    w1.reload(tiny_model_dir, cfg)
    table = toy_pairs(N_PAIRS, seed=3)
    tok = w1.learner.tokenizer
    ids = [[*tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id] for t in table["rejected"].to_pylist()]
    ids[0] = None  # the reference answer of a SPIN pair has no sampled tokens: left out
    table = table.append_column("rejected_token_ids", pa.array(ids, type=pa.list_(pa.int64())))
    with_ref = w1.compute_reference(table, cfg=cfg)
    w1.train_round(with_ref, cfg)
    got = rejected_drift(w1, with_ref, cfg)
    now = w1.compute_reference(table, cfg=cfg).column("ref_rejected_logps").to_pylist()
    before = with_ref.column("ref_rejected_logps").to_pylist()
    expected = sum(b - a for b, a in list(zip(before, now))[1:]) / (N_PAIRS - 1)
    assert set(got) == {"rejected_drift"} and got["rejected_drift"] == pytest.approx(expected, rel=1e-5)
    assert got["rejected_drift"] > 0  # the round pushed the rejected answers down


def test_the_drift_scores_an_even_subsample_of_rejected_samples_alone(w1, tiny_model_dir):
    """Past ``evaluation.drift_samples`` sampled pairs the drift is the mean over an evenly spread
    subsample, and only the rejected side is scored again (the chosen column comes back as it went in);
    0 samples measures nothing."""
    import selfplay.loop.stages as stages

    cfg = TrainConfig(**SHAPE, loss=LossConfig(type="sigmoid"))
    w1.reload(tiny_model_dir, cfg)
    table = toy_pairs(N_PAIRS, seed=5)
    tok = w1.learner.tokenizer
    ids = [[*tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id] for t in table["rejected"].to_pylist()]
    table = table.append_column("rejected_token_ids", pa.array(ids, type=pa.list_(pa.int64())))
    with_ref = w1.compute_reference(table, cfg=cfg)
    w1.train_round(with_ref, cfg)
    alone = w1.compute_reference(with_ref, cfg=cfg, as_reference=False, only_rejected=True)
    assert alone.column("ref_chosen_logps").to_pylist() == with_ref.column("ref_chosen_logps").to_pylist()
    now = alone.column("ref_rejected_logps").to_pylist()
    before = with_ref.column("ref_rejected_logps").to_pylist()
    picked = [0, N_PAIRS // 2]  # 2 of 5, evenly spread
    expected = sum(before[i] - now[i] for i in picked) / len(picked)
    got = stages.rejected_drift(w1, with_ref, cfg, samples=2)
    assert got["rejected_drift"] == pytest.approx(expected, rel=1e-5)
    assert stages.rejected_drift(w1, with_ref, cfg, samples=0) == {}


def test_measuring_the_drift_after_a_tdpo_round_keeps_its_frozen_reference(w1, tiny_model_dir):
    """The loop scores the rejected samples again after the round (``rejected_drift``); for TDPO that
    must not replace the round's frozen reference with the trained weights."""
    from selfplay.loop.stages import rejected_drift

    cfg = TrainConfig(**SHAPE, loss=LossConfig(type="tdpo"))
    w1.reload(tiny_model_dir, cfg)
    table = toy_pairs(N_PAIRS, seed=4)
    tok = w1.learner.tokenizer
    ids = [[*tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id] for t in table["rejected"].to_pylist()]
    table = table.append_column("rejected_token_ids", pa.array(ids, type=pa.list_(pa.int64())))
    with_ref = w1.compute_reference(table, cfg=cfg)
    frozen = {k: v.clone() for k, v in w1.learner.ref_model.state_dict().items()}
    w1.train_round(with_ref, cfg)
    assert set(rejected_drift(w1, with_ref, cfg)) == {"rejected_drift"}
    kept = w1.learner.ref_model.state_dict()
    assert kept.keys() == frozen.keys() and all(torch.equal(kept[k], v) for k, v in frozen.items())
    trained = dict(w1.learner.engine.module.named_parameters())
    assert any(not torch.equal(trained[k].detach(), frozen[k]) for k in frozen if k in trained)  # the round moved
