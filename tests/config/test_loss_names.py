"""Loss names and parameter names users bring from papers and TRL; recipes that cannot work are refused."""

from __future__ import annotations

import pytest
import yaml

from selfplay.config import ConfigError, dump_config, load_config
from selfplay.config.schema import LossConfig

MINIMAL = {"policy": {"preset": "nano"}, "task": {"type": "arithmetic"}, "judge": {"type": "verifier"}}


def recipe(**train) -> dict:
    return {**MINIMAL, "train": train}


@pytest.mark.parametrize(("alias", "canonical"), [("dpo", "sigmoid"), ("cdpo", "sigmoid"), ("rdpo", "robust")])
def test_common_names_are_aliases_and_validate_prints_the_canonical_one(alias, canonical):
    cfg = load_config(recipe(loss={"type": alias, "params": {"label_smoothing": 0.1}}))
    assert cfg.train.loss.type == canonical and cfg.train.loss.params == {"label_smoothing": 0.1}
    dumped = yaml.safe_load(dump_config(cfg))
    assert dumped["train"]["loss"]["type"] == canonical
    assert load_config(dumped) == cfg


def test_trl_parameter_names_carry_over():
    assert LossConfig(type="exo_pair", params={"label_smoothing": 0.01}).params == {"epsilon": 0.01}
    assert LossConfig(type="discopop", params={"discopop_tau": 0.1}).resolved_params() == {"tau": 0.1}
    with pytest.raises(ValueError, match=r"same setting"):
        LossConfig(type="discopop", params={"discopop_tau": 0.1, "tau": 0.2})
    with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):  # ranges apply to the aliased name
        LossConfig(type="exo_pair", params={"label_smoothing": 0.0})


def test_odpo_is_refused_where_no_offset_can_exist(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n' * 4)
    offline = {"policy": {"preset": "nano"}, "task": {"type": "pairs", "path": str(pairs)},
               "train": {"loss": {"type": "odpo"}}}
    with pytest.raises(ConfigError, match="odpo's per-pair offsets come from judge scores"):
        load_config(offline)
    with pytest.raises(ConfigError, match="offset.*comes from the judge scores"):
        load_config(recipe(loss={"type": "odpo", "params": {"offset": 1.0}}))
    assert load_config(recipe(loss={"type": "odpo", "params": {"alpha": 0.5}})).train.loss.type == "odpo"


def test_sdpo_chunks_need_enough_of_them(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n')
    base = {"policy": {"preset": "nano"}, "task": {"type": "pairs", "path": str(pairs), "chunks": 2}}
    assert load_config({**base, "iterations": 2}).task.chunks == 2
    with pytest.raises(ConfigError, match="iterations: 3 is more than task.chunks 2"):
        load_config({**base, "iterations": 3})
