"""The run directory: immutable per-iteration artifacts and a manifest that says what is done.

Layout (the contract users and ``selfplay status`` rely on)::

    RUN_DIR/
      manifest.json            recipe, package versions, each iteration's completed stages + timings
      recipe.yaml              the resolved recipe the run was started with
      initial/policy/          the starting policy (preset built offline, after the optional SFT warm start)
      initial/eval.json        evaluation of the starting policy (the baseline every iteration is compared to)
      iter_000/
        generations/shard_*.parquet   written as generation proceeds (resume regenerates only missing shards)
        generations.parquet  judgments.parquet  pairs.parquet  reference.parquet
        train_metrics.jsonl  checkpoint/  policy/  eval.json
      tensorboard/

Every file is written to a temporary name in the same directory and renamed into place, so a crash
leaves either the previous artifact or the new one, never half a file; a failed write (disk full,
read-only) raises and leaves what was there. A stage is complete when the manifest says so, and its
artifact is only trusted then: resuming means finding the first stage the manifest does not list.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfplay.atomic import replace_dir, umask_mode  # noqa: F401  (replace_dir: part of the run-dir API)

STAGES = ("generate", "judge", "pairs", "reference", "train", "export", "sync", "evaluate")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (another recipe, a corrupt manifest, ...)."""


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        umask_mode(tmp_path)  # mkstemp's 0600 would hide the artifact from the user's group
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return _atomic(Path(path), lambda p: p.write_text(text))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: Path, table) -> Path:
    import pyarrow.parquet as pq

    return _atomic(Path(path), lambda p: pq.write_table(table, p))


def read_parquet(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


class RunDir:
    """A run directory and its manifest. Only the driver process writes the manifest."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.manifest_path = self.root / "manifest.json"
        self.manifest: dict[str, Any] = self._read() if self.manifest_path.exists() else {}

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{self.manifest_path} is not valid JSON ({exc}): not written by selfplay") from None

    @property
    def exists(self) -> bool:
        return bool(self.manifest)

    def create(self, recipe: dict[str, Any], recipe_yaml: str, versions: dict[str, str]) -> None:
        # Never world-writable, whatever the umask: what is in it is trusted on resume (see docs/security.md).
        self.root.mkdir(mode=0o775, parents=True, exist_ok=True)
        write_text(self.root / "recipe.yaml", recipe_yaml)
        self.manifest = {
            "format": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "recipe": recipe,
            "versions": versions,
            "prepared": False,
            "iterations": {},
        }
        self.save()

    def save(self) -> None:
        write_json(self.manifest_path, self.manifest)

    # --- paths
    def iter_dir(self, k: int) -> Path:
        return self.root / f"iter_{k:03d}"

    @property
    def initial_dir(self) -> Path:
        return self.root / "initial"

    # --- stage bookkeeping
    def _iter(self, k: int) -> dict[str, Any]:
        return self.manifest["iterations"].setdefault(str(k), {"stages": {}, "complete": False})

    def stage_done(self, k: int, stage: str) -> bool:
        return stage in self.manifest["iterations"].get(str(k), {}).get("stages", {})

    def mark_stage(self, k: int, stage: str, seconds: float, info: dict[str, Any] | None = None) -> None:
        """Record ``stage`` of iteration ``k`` as done; ``seconds`` (wall time of the stage) wins over
        a same-named key in ``info``."""
        self._iter(k)["stages"][stage] = {**(info or {}), "seconds": round(seconds, 3)}
        self.save()

    def mark_complete(self, k: int, policy_version: int) -> None:
        entry = self._iter(k)
        entry["complete"] = True
        entry["policy_version"] = policy_version
        self.save()

    def stage_info(self, k: int, stage: str) -> dict[str, Any]:
        return self.manifest["iterations"].get(str(k), {}).get("stages", {}).get(stage, {})

    def completed_iterations(self) -> list[int]:
        return sorted(int(k) for k, v in self.manifest.get("iterations", {}).items() if v.get("complete"))

    def next_iteration(self) -> int:
        done = self.completed_iterations()
        return done[-1] + 1 if done else 0

    def current_policy(self) -> Path:
        """The newest committed policy: the last complete iteration's, else the initial one."""
        done = self.completed_iterations()
        return self.iter_dir(done[-1]) / "policy" if done else self.initial_dir / "policy"
