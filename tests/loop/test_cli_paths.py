"""The CLI writes only where it was told: a recipe ``name`` stays inside ``runs/``, and ``report`` on a
mistyped path creates nothing.

In-process ``selfplay.cli.main`` in a scratch working directory; each refusal happens before anything
heavy starts, and the test checks the whole scratch tree afterwards, not only the path it expects.
"""

from __future__ import annotations

import pytest
import yaml

from selfplay.cli import main
from tests.e2e.conftest import MICRO


def _tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["../../escaped", "../sibling", "/tmp/absolute-escape", "a/b", "..", "."])
def test_a_recipe_name_cannot_leave_the_runs_directory(tmp_path, monkeypatch, capsys, name):
    work = tmp_path / "project" / "sub"
    work.mkdir(parents=True)
    recipe = tmp_path / "micro.yaml"
    recipe.write_text(yaml.safe_dump(MICRO, sort_keys=False))
    before = _tree(tmp_path)
    monkeypatch.chdir(work)
    assert main(["prepare", str(recipe), "--set", f"name={name}"]) == 2
    err = capsys.readouterr().err
    assert f"name: {name!r} is not a plain folder name" in err and str(recipe) in err
    assert _tree(tmp_path) == before


def test_a_plain_name_is_a_folder_under_runs_and_run_dir_wins(tmp_path):
    from selfplay.cli import _run_dir
    from selfplay.config import load_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**MICRO, "name": "my-run_2"}, sort_keys=False))
    cfg = load_config(recipe, [])
    assert str(_run_dir(cfg, None, str(recipe))) == "runs/my-run_2"
    # An explicit directory is the user's own choice of place, whatever the name says.
    assert str(_run_dir(cfg.model_copy(update={"name": "../x"}), "/elsewhere/ok", str(recipe))) == "/elsewhere/ok"


def test_report_on_a_mistyped_path_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "runs" / "quickstrat"
    assert main(["report", str(typo)]) == 1
    assert "has no manifest.json: not a selfplay run directory" in capsys.readouterr().err
    assert _tree(tmp_path) == set()
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "plots")]) == 1
    assert _tree(tmp_path) == set()
