"""recipes/iterative_rpo_gsm8k.yaml (Pang et al. 2024): it validates with the paper's settings, its plan fits
the README's cluster of two 8-GPU workers and not one GPU less, and on a GSM8K-format file it builds a task
whose `math` grader reads the `#### N` references, with every prompt inside the recipe's lengths. The
checkpoint is not here: a tiny Llama-family checkpoint stands in for it (as in test_real_model_recipes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfplay.config import ConfigError, load_config
from selfplay.loop.placement import check_cluster

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "recipes" / "iterative_rpo_gsm8k.yaml"
TWO_BY_EIGHT = [{"CPU": 64.0, "GPU": 8.0}, {"CPU": 64.0, "GPU": 8.0}]


def test_the_papers_settings():
    cfg = load_config(RECIPE)
    assert cfg.iterations == 4 and cfg.generation.n == 30 and cfg.generation.temperature == 0.8
    assert cfg.judge.type == "verifier" and cfg.task.type == "dataset" and cfg.task.grader.type == "math"
    assert cfg.pairing.strategy == "all_pairs" and cfg.pairing.drop_ties and cfg.pairing.max_pairs_per_prompt == 10
    loss = cfg.train.loss
    assert (loss.type, loss.beta, loss.nll_weight) == ("sigmoid", 0.1, 1.0) and cfg.train.reference == "previous"
    assert cfg.train.micro_batch_size * cfg.train.gradient_accumulation_steps * cfg.resources.learners == 16


def test_the_plan_fits_the_readme_cluster_and_not_one_gpu_less():
    cfg = load_config(RECIPE)
    result = check_cluster(cfg, TWO_BY_EIGHT)
    assert len(set(result.placed["learners"])) == 1 and len(set(result.placed["generators"])) == 1
    with pytest.raises(ConfigError, match="GPU: the run needs 16 at once, the cluster has 15"):
        check_cluster(cfg, [{"CPU": 64.0, "GPU": 8.0}, {"CPU": 64.0, "GPU": 7.0}])


def test_on_a_gsm8k_format_file(tmp_path):
    from transformers import AutoTokenizer

    from selfplay.generate import encode_prompts
    from selfplay.loop.preflight import preflight
    from selfplay.models.families import build_family

    model_dir = build_family(tmp_path / "llama3", "llama3")
    rows = (ROOT / "docs" / "examples" / "gsm8k_style.jsonl").read_text().splitlines(keepends=True)
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"  # GSM8K's two files, in its format
    train.write_text("".join(rows[2:]))
    test.write_text("".join(rows[:2]))
    cfg = load_config(RECIPE, [f"policy.path={model_dir}", f"task.path={train}", f"task.eval_path={test}",
                               "evaluation.num_prompts=2", "generation.prompts_per_iteration=8"])
    task = preflight(cfg, str(RECIPE)).task
    examples = task.eval_examples() + task.train_examples()
    assert [task.score(e, e.reference) for e in examples] == [1.0] * 10  # the worked solution grades right
    assert task.score(examples[0], "Half of 48 is 24, so 72 muffins at $3.\nFinal answer: 216") == 1.0
    assert task.score(examples[0], "Final answer: 215") == 0.0
    ids = encode_prompts(AutoTokenizer.from_pretrained(model_dir), [e.prompt for e in examples])
    assert max(len(x) for x in ids) <= cfg.train.max_prompt_length
