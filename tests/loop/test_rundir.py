"""Run-directory contract: atomic artifacts, failed writes keep the old file, stage bookkeeping."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from selfplay.loop.rundir import RunDir, RunDirError, read_parquet, replace_dir, write_json, write_parquet


def test_write_json_replaces_atomically(tmp_path):
    path = tmp_path / "eval.json"
    write_json(path, {"accuracy": 0.5})
    write_json(path, {"accuracy": 0.7})
    assert json.loads(path.read_text()) == {"accuracy": 0.7}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no temp files left behind


def test_failed_write_keeps_previous_artifact(tmp_path):
    path = tmp_path / "pairs.parquet"
    write_parquet(path, pa.table({"x": [1, 2, 3]}))

    class Boom(Exception):
        pass

    class BadTable:
        def __getattr__(self, name):
            raise Boom("disk full (injected)")

    with pytest.raises(Exception, match="injected|disk full|Boom|expected"):
        write_parquet(path, BadTable())
    assert read_parquet(path).column("x").to_pylist() == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.parquet"]


def test_read_only_filesystem_error_keeps_file(tmp_path, monkeypatch):
    path = tmp_path / "eval.json"
    write_json(path, {"v": 1})

    def read_only(src, dst):
        raise OSError(30, "Read-only file system (injected)")

    monkeypatch.setattr("selfplay.atomic.os.replace", read_only)
    with pytest.raises(OSError, match="Read-only"):
        write_json(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_replace_dir_swaps_whole_directory(tmp_path):
    final = tmp_path / "policy"

    def build(version):
        def _b(d):
            (d / "weights.txt").write_text(version)
        return _b

    replace_dir(final, build("v1"))
    replace_dir(final, build("v2"))
    assert (final / "weights.txt").read_text() == "v2"

    def broken(d):
        (d / "weights.txt").write_text("half")
        raise OSError("no space left on device (injected)")

    with pytest.raises(OSError, match="injected"):
        replace_dir(final, broken)
    assert (final / "weights.txt").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_stage_bookkeeping_and_resume_point(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.create({"name": "t"}, "name: t\n", {"selfplay": "0"})
    assert rd.next_iteration() == 0
    assert rd.current_policy() == rd.initial_dir / "policy"
    rd.mark_stage(0, "generate", 1.5, {"samples": 8, "seconds": 99})
    rd.mark_stage(0, "judge", 0.5)
    again = RunDir(tmp_path / "run")  # a new process reads the same state
    assert again.stage_done(0, "generate") and again.stage_done(0, "judge")
    assert not again.stage_done(0, "pairs")
    assert again.stage_info(0, "generate") == {"samples": 8, "seconds": 1.5}
    again.mark_complete(0, policy_version=1)
    assert RunDir(tmp_path / "run").next_iteration() == 1
    assert RunDir(tmp_path / "run").current_policy() == again.iter_dir(0) / "policy"


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RunDirError, match="manifest.json is not valid JSON"):
        RunDir(tmp_path)


def test_leftover_temporaries_of_unfinished_writes_are_removed_and_nothing_else(tmp_path):
    import os

    from selfplay.atomic import TMP_INFIX

    rd = RunDir(tmp_path / "run")
    rd.create({"name": "t"}, "name: t\n", {})
    write_json(rd.iter_dir(0) / "eval.json", {"accuracy": 0.5})
    # what write_file and replace_dir leave when the process dies before the rename
    (rd.iter_dir(0) / f".pairs.parquet{TMP_INFIX}abc123").write_bytes(b"PAR1 half")
    half = rd.iter_dir(0) / f".policy{TMP_INFIX}x9"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    (rd.root / f".manifest.json{TMP_INFIX}q").write_text("{")
    before = {p for p in rd.root.rglob("*") if TMP_INFIX not in str(p)}
    removed = rd.remove_leftovers()
    assert sorted(p.name for p in removed) == sorted(
        [f".pairs.parquet{TMP_INFIX}abc123", f".policy{TMP_INFIX}x9", f".manifest.json{TMP_INFIX}q"])
    assert {p for p in rd.root.rglob("*")} == before  # the real artifacts are untouched
    assert json.loads((rd.iter_dir(0) / "eval.json").read_text()) == {"accuracy": 0.5}
    assert rd.remove_leftovers() == [] and os.path.isdir(rd.root)
