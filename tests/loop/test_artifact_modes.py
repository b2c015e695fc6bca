"""Artifacts get the modes the user's umask gives, so a team on shared storage can read a run.

``tempfile`` (behind every atomic write) creates files 0600 and directories 0700 whatever the umask;
the swapped-in artifact must look like one written by a plain ``open``/``mkdir``. Nothing in a run
directory is ever world-writable, though: what it holds is trusted on resume.
"""

from __future__ import annotations

import os
import stat

import pytest

from selfplay.atomic import replace_dir
from selfplay.loop.rundir import RunDir, write_json, write_parquet


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o007, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_atomic_files_and_dirs_follow_the_umask(tmp_path, umask):
    import pyarrow as pa

    write_json(tmp_path / "a.json", {"x": 1})
    write_parquet(tmp_path / "t.parquet", pa.table({"x": [1, 2]}))
    replace_dir(tmp_path / "policy", lambda d: (d / "config.json").write_text("{}"))
    replace_dir(tmp_path / "policy", lambda d: (d / "config.json").write_text("{}"))  # the swap, too
    assert _mode(tmp_path / "a.json") == 0o664 & ~umask
    assert _mode(tmp_path / "t.parquet") == 0o664 & ~umask
    assert _mode(tmp_path / "policy") == 0o775 & ~umask
    assert _mode(tmp_path / "policy" / "config.json") == 0o664 & ~umask


def test_run_directory_is_readable_by_the_group_and_never_world_writable(tmp_path):
    old = os.umask(0o000)  # the most permissive umask there is
    try:
        rd = RunDir(tmp_path / "run")
        rd.create({"name": "x"}, "name: x\n", {})
    finally:
        os.umask(old)
    assert _mode(rd.root) == 0o775
    assert _mode(rd.root / "manifest.json") == 0o664
    assert _mode(rd.root / "recipe.yaml") == 0o664
