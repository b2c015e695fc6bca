"""Preflight: a dataset too small for the configured evaluation fails before any work, naming both numbers."""

from __future__ import annotations

import json

import pytest

from selfplay.config import ConfigError, load_config
from selfplay.loop.preflight import preflight


def recipe(path, **evaluation) -> dict:
    return {"policy": {"preset": "nano"}, "judge": {"type": "sft"},  # SPIN's judge: no model to check
            "task": {"type": "dataset", "path": str(path), "reference_column": "answer"},
            "evaluation": evaluation}


@pytest.fixture
def rows_2000(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i % 7}?", "answer": str(i + i % 7)}) + "\n"
                            for i in range(2000)))
    return path


def test_default_eval_size_on_a_2000_row_file_is_caught(rows_2000):
    with pytest.raises(ConfigError, match=r"evaluation.num_prompts: 500 is more than the 100 held-out rows") as err:
        preflight(load_config(recipe(rows_2000)))
    assert "task.eval_fraction 0.05" in str(err.value) and "<= 100" in str(err.value)


def test_an_eval_size_that_fits_passes(rows_2000):
    preflight(load_config(recipe(rows_2000, num_prompts=100)))
    preflight(load_config(recipe(rows_2000, num_prompts=0)))  # evaluation off: nothing to check
