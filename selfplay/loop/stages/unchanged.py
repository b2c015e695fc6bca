"""An iteration without pairs: its reference, export and sync stages keep the policy as it is, under
the next version number."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from selfplay.loop import faults
from selfplay.loop.rundir import read_parquet, write_parquet
from selfplay.loop.stages.context import GeneratorsAt, Iteration
from selfplay.loop.stages.weights import start_generators


def keep_reference(it: Iteration) -> dict[str, Any]:
    write_parquet(it.dir / "reference.parquet", read_parquet(it.dir / "pairs.parquet"))
    return {"skipped": "no pairs"}


def export_unchanged(it: Iteration) -> dict[str, Any]:
    """The unchanged policy, as this iteration's (hard links: no bytes copied)."""
    from selfplay.atomic import replace_dir

    replace_dir(it.policy_out, lambda tmp: _link_tree(it.policy_in, tmp))
    return {"policy": str(it.policy_out), "unchanged_from": str(it.policy_in)}


def sync_unchanged(it: Iteration, pool, generators: GeneratorsAt) -> dict[str, Any]:
    """Same weights under the next version number, loaded through the verified path."""
    if pool is None:
        return start_generators(it, generators)
    pool.load_dir(it.policy_out, it.version)
    faults.kill_point("sync", it.k)
    return {"version": it.version, "method": "unchanged policy reloaded from disk"}


def _link_tree(source: Path, target: Path) -> None:
    """Copy the files of ``source`` into ``target`` as hard links (a plain copy across filesystems)."""
    import os

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, dirs_exist_ok=True)
