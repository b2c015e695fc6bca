"""The run directory: immutable per-iteration artifacts and a manifest that says what is done.

Layout (the contract users and ``selfplay status`` rely on)::

    RUN_DIR/
      manifest.json            recipe, package versions, each iteration's completed stages + timings,
                               SHA-256 pins of the inputs outside the run (``inputs``: policy.path,
                               task.path, ...; a resume refuses a changed one), recipe changes
                               taken on resume, take-overs of a dead driver's run (``takeovers``),
                               and the last failure (``failed``, shown by status)
      recipe.yaml              the resolved recipe the run was started with
      initial/policy/          the starting policy (preset built offline, after the optional SFT warm start;
                               a ``policy.path`` run without a warm start reads that directory, pinned)
      initial/eval.json        evaluation of the starting policy (the baseline every iteration is compared to)
      iter_000/
        generations/shard_*.parquet   written as generation proceeds (resume regenerates only missing shards)
        generations.parquet  judgments.parquet  pairs.parquet  reference.parquet
        train_metrics.jsonl  policy/  eval.json
        checkpoint/          while a round runs with ``train.checkpoint_every`` (removed by export)
      tensorboard/             TensorBoard events (steps from the learner, iterations from the driver)
      tracking.json            each tracker's run id and last logged step and iteration (selfplay.loop.tracking)
      wandb/                   wandb's run files, when it is a backend
      owner/record.json        the driver holding the run (host, pid, heartbeat: its mtime); see ownership.py

Every file is written to a temporary name in the same directory and renamed into place, so a crash
leaves either the previous artifact or the new one, never half a file; a failed write (disk full,
read-only) raises and leaves what was there. A stage is complete when the manifest says so, and its
artifact is only trusted then: resuming means finding the first stage the manifest does not list.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from selfplay.atomic import TMP_INFIX, check_guard, replace_dir, write_file  # noqa: F401  (replace_dir: run-dir API)
from selfplay.loop import faults
from selfplay.loop.manifest import (  # noqa: F401  (STAGES, Stage: the run directory's vocabulary)
    STAGES,
    Failure,
    IterationRecord,
    Manifest,
    ManifestError,
    Record,
    Stage,
    manifest_path,
    record_for,
)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (another recipe, a corrupt manifest, ...)."""


def write_text(path: Path, text: str) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(text)
        faults.write_point(path)  # crash tests (``write@k:n``): killed before the rename

    return write_file(path, write)


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: Path, table) -> Path:
    import pyarrow.parquet as pq

    def write(tmp: Path) -> None:
        pq.write_table(table, tmp)
        faults.write_point(path)  # crash tests (``write@k:n``): killed before the rename

    return write_file(path, write)


def read_json(path: Path) -> Any:
    """A JSON artifact; a damaged one is a :class:`RunDirError` naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is damaged ({exc}); delete it and rerun to write it again") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines log. A last line cut short (a writer killed mid-line, no newline) is
    skipped; any other bad line is a :class:`RunDirError` naming the file and line."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if lineno == len(lines):  # no newline after it: the write was interrupted
                continue
            raise RunDirError(f"{path}: line {lineno} is not valid JSON ({exc})") from None
    return records


def input_paths(cfg: Any) -> dict[str, str]:
    """The recipe fields naming files or directories outside the run that the run reads."""
    out = {"policy.path": cfg.policy.path}
    out["task.path"] = getattr(cfg.task, "path", None)
    out["task.eval_path"] = getattr(cfg.task, "eval_path", None)
    out["judge.path"] = getattr(cfg.judge, "path", None) if cfg.judge is not None else None
    return {k: v for k, v in out.items() if v is not None}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checksums(root: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, sha256}}`` of a file, or of every file under a directory."""
    if root.is_file():
        return {".": {"size": root.stat().st_size, "sha256": _sha256(root)}}
    if not root.is_dir():
        return {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                            p.relative_to(root).parts))
    return {str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def read_parquet(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


class RunDir:
    """A run directory and its manifest (:class:`~selfplay.loop.manifest.Manifest`; an empty one where the
    directory has none yet). Only the driver process writes the manifest."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.manifest_path = manifest_path(self.root)
        self._exists = self.manifest_path.exists()
        self.manifest = self._read() if self._exists else Manifest()
        self.notes: list[str] = []  # what opening it decided (recipe changes), for the run's log

    def _read(self) -> Manifest:
        try:
            return Manifest.load(self.root)
        except ManifestError as exc:
            raise RunDirError(str(exc)) from None

    @property
    def exists(self) -> bool:
        return self._exists

    def create(self, recipe: dict[str, Any], recipe_yaml: str, versions: dict[str, str]) -> None:
        # Never world-writable, whatever the umask: what is in it is trusted on resume (see docs/security.md).
        self.root.mkdir(mode=0o775, parents=True, exist_ok=True)
        write_text(self.root / "recipe.yaml", recipe_yaml)
        self.manifest = Manifest.new(recipe, versions)
        self.save()

    def save(self) -> None:
        self.manifest.save(self.root)
        self._exists = True

    # --- paths
    def iter_dir(self, k: int) -> Path:
        return self.root / f"iter_{k:03d}"

    @property
    def initial_dir(self) -> Path:
        return self.root / "initial"

    # --- stage bookkeeping
    def _iter(self, k: int) -> IterationRecord:
        if str(k) not in self.manifest.iterations:
            self.manifest.iterations[str(k)] = IterationRecord(stages={}, complete=False)
        return self.manifest.iterations[str(k)]

    def stage_done(self, k: int, stage: str) -> bool:
        return self.manifest.stage(k, stage) is not None

    def mark_stage(self, k: int, stage: str, seconds: float, record: Record | dict[str, Any] | None = None) -> None:
        """Record ``stage`` of iteration ``k`` as done; ``seconds`` (wall time of the stage) wins over
        a ``seconds`` the record has."""
        done = record_for(stage, record)
        done.seconds = round(seconds, 3)
        self._iter(k).stages[stage] = done
        self.save()

    def mark_complete(self, k: int, policy_version: int, wall_seconds: float | None = None) -> None:
        entry = self._iter(k)
        entry.complete = True
        entry.policy_version = policy_version
        if wall_seconds is not None:
            entry.wall_seconds = round(wall_seconds, 3)
        self.save()

    def stage_record(self, k: int, stage: str) -> Record:
        """Iteration ``k``'s record of ``stage``; an empty one of its type when the stage is not done."""
        return record_for(stage, self.manifest.stage(k, stage))

    def stage_info(self, k: int, stage: str) -> dict[str, Any]:
        """Iteration ``k``'s record of ``stage`` as stored (``{}`` when the stage is not done)."""
        done = self.manifest.stage(k, stage)
        return done.as_dict() if done is not None else {}

    def completed_iterations(self) -> list[int]:
        return sorted(int(k) for k, v in self.manifest.iterations.items() if v.complete)

    def next_iteration(self) -> int:
        done = self.completed_iterations()
        return done[-1] + 1 if done else 0

    def resume_notes(self) -> list[str]:
        """What a resumed run keeps, in one line ("resuming at iteration 1: ..."); none for a new run."""
        iterations = self.manifest.iterations
        if not self.manifest.prepared and not iterations:
            return list(self.notes)
        k = self.next_iteration()
        done = self.completed_iterations()
        kept = list(iterations[str(k)].stages) if str(k) in iterations else []
        parts = ["starting policy kept" if not done else
                 f"iteration{'s' if len(done) > 1 else ''} {', '.join(map(str, done))} complete"]
        if kept:
            parts.append(f"stages {', '.join(kept)} kept")
        shards = sorted((self.iter_dir(k) / "generations").glob("shard_*.parquet"))
        if "generate" not in kept and shards:
            parts.append(f"generate: {len(shards)} shard(s) on disk, reused where they match")
        latest = self.iter_dir(k) / "checkpoint" / "latest"
        if "train" not in kept and latest.is_file():
            parts.append(f"train: continues from checkpoint {latest.read_text().strip()}")
        return [*self.notes, f"resuming at iteration {k}: " + "; ".join(parts)]

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporaries of writes that never finished (``.<name>.tmp-*``: a driver killed between
        writing one and renaming it). Nothing reads them; called by the driver when it takes the run."""
        check_guard(self.root)
        found = sorted(self.root.rglob(f".*{TMP_INFIX}*")) if self.root.is_dir() else []
        removed: list[Path] = []
        for path in found:
            if any(parent in removed for parent in path.parents):
                continue  # inside a temporary directory already removed
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    def log_takeover(self, entry: dict[str, Any]) -> None:
        """Record that this run was taken over from another driver (who, when, why: ``takeovers``)."""
        self.manifest.takeovers = [*(self.manifest.takeovers or []), entry]
        self.save()

    # --- failures (``selfplay status`` shows them; the next run clears them)
    def record_failure(self, k: int | None, stage: str, error: str) -> None:
        if not self.exists:
            return
        self.manifest.failed = Failure(iteration=k, stage=stage, error=error[-2000:],
                                       at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        with contextlib.suppress(OSError):  # the failure may be the disk itself; the error is raised anyway
            self.save()

    def clear_failure(self) -> None:
        if self.manifest.failed is not None:
            self.manifest.unset("failed")
            self.save()

    # --- inputs the run trusts (pinned by checksum; a changed one is refused on resume)
    def pin_inputs(self, cfg: Any) -> None:
        self.manifest.inputs = {name: {"path": str(Path(p).resolve()), "files": _checksums(Path(p))}
                                   for name, p in input_paths(cfg).items()}
        self.save()

    def check_pins(self) -> None:
        for name, pin in (self.manifest.inputs or {}).items():
            root, now = Path(pin["path"]), _checksums(Path(pin["path"]))
            for rel, before in sorted(pin["files"].items()):
                path = root / rel if rel != "." else root
                if rel not in now:
                    raise RunDirError(f"{name}: {path} is gone since the run started; restore it, or start a "
                                      "new --run-dir")
                if now[rel] != before:
                    raise RunDirError(f"{name}: {path} changed since the run started (sha256 "
                                      f"{before['sha256'][:12]}... is now {now[rel]['sha256'][:12]}...); "
                                      "restore it, or start a new --run-dir")
            added = sorted(set(now) - set(pin["files"]))
            if added:
                raise RunDirError(f"{name}: {root / added[0]} was added since the run started; remove it, or "
                                  "start a new --run-dir")

    def supersede(self, k: int, stages: list[str], artifacts: list[str]) -> list[str]:
        """Forget ``stages`` of iteration ``k`` and move ``artifacts`` (names in its directory) aside
        into ``iter_k/superseded/<n>/``: redone work never appends to, or resumes from, the old."""
        check_guard(self.root)
        entry = self.manifest.iteration(k)
        for stage in stages:
            if entry is not None:
                entry.stages.pop(stage, None)
        present = [a for a in artifacts if (self.iter_dir(k) / a).exists()]
        if present:
            base = self.iter_dir(k) / "superseded"
            dest = base / str(len(list(base.glob("*"))) if base.exists() else 0)
            dest.mkdir(parents=True)
            for name in present:
                shutil.move(str(self.iter_dir(k) / name), str(dest / name))
        self.save()
        return [str((self.iter_dir(k) / a).relative_to(self.root)) for a in present]

    def current_policy(self) -> Path:
        """The newest committed policy: the last complete iteration's, else the initial one."""
        done = self.completed_iterations()
        return self.iter_dir(done[-1]) / "policy" if done else self.initial_dir / "policy"
