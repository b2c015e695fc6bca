"""Weight sync through a shared directory: buckets written once, every generator reloads them by path.

For clusters with a shared filesystem (NFS, Lustre) and for keeping every synced version inspectable.
Layout: ``<shared_dir>/v{version:06d}/bucket_{i:05d}.safetensors`` plus ``manifest.json``
(version, bucket count, bytes, checksum); the ``base`` and ``adapter`` parts of an adapter-only sync
(:mod:`selfplay.sync.base`) go to ``v{version:06d}-base`` and ``v{version:06d}-adapter``. Choices:

* Atomic: a version directory is written under a temporary name and renamed, so a directory that
  exists is complete; a generator never reads a half-written sync.
* Generators read the files and go through the same verified load as every other method (checksum per
  bucket, version, complete names), rather than vLLM's own reload-from-path, which would skip checks.
* Only the newest ``keep`` versions are kept (with all their parts), so the current one is always there
  for a generator Ray restarts (unless the learner has the same weights in a directory of its own).
* A generator reads each file into memory it owns (one copy) rather than mapping it: the bytes it
  verifies are then the bytes it loads, even if something rewrote the shared file in between, and a
  file removed on another NFS client cannot fault (SIGBUS) the generator mid-load. Verification and
  loading read that copy in place (:func:`selfplay.sync.buckets.unpack_bucket` returns views).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from selfplay.atomic import replace_dir
from selfplay.remote import ray_get
from selfplay.sync.base import LearnerHandle, Load, Part, Staged, as_task, summarize
from selfplay.sync.buckets import BucketError, bucket_parts
from selfplay.sync.strategy import WeightSync
from selfplay.sync.verify import DEFAULT_PROBE, ProbeSpec

PATH_METHOD: dict[str, str] = {"policy": "load_path", "base": "load_path", "adapter": "load_adapter_path"}
"""The generator method that loads each part from its directory."""


def version_dir(root: str | Path, version: int, part: Part = "policy") -> Path:
    return Path(root) / (f"v{version:06d}" if part == "policy" else f"v{version:06d}-{part}")


def write_weights_dir(root: str | Path, version: int, blobs: list[bytes], part: Part = "policy") -> str:
    """Write one sync's buckets atomically; returns the version directory."""

    def build(tmp: Path) -> None:
        for i, blob in enumerate(blobs):
            with (tmp / f"bucket_{i:05d}.safetensors").open("wb") as f:
                for part in bucket_parts(blob):  # a split bucket is written part by part
                    f.write(part)
        checksum, nbytes, count = summarize(blobs)
        manifest = {"version": version, "buckets": count, "bytes": nbytes, "checksum": checksum}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    # A re-push of the same version replaces it whole, in one exchange of names (selfplay.atomic).
    return str(replace_dir(version_dir(root, version, part), build))


def read_weights_dir(path: str | Path, version: int, attempts: int = 5) -> list[bytes]:
    """The buckets of a version directory, checked against its manifest (contents are verified on load).

    The manifest and the buckets are read through one open handle of the directory, so they come from
    the same directory even when a re-push swaps a new one in meanwhile. The writer then deletes the
    old one, and a reader half-way through it sees files vanish: when that happens and the path now
    names another directory, the read starts again on that one (``attempts`` times in all).
    """
    path = Path(path)
    for attempt in range(attempts):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise BucketError(f"{path} has no readable manifest.json: {exc}") from None
        try:
            return _read_open_dir(path, fd, version)
        except BucketError:
            if attempt == attempts - 1 or not _swapped(path, fd):
                raise
        finally:
            os.close(fd)
    raise AssertionError("unreachable")


def _read_open_dir(path: Path, fd: int, version: int) -> list[bytes]:
    def read(name: str) -> bytes:
        with open(os.open(name, os.O_RDONLY, dir_fd=fd), "rb") as f:
            return f.read()

    try:
        manifest = json.loads(read("manifest.json"))
    except (OSError, ValueError) as exc:
        raise BucketError(f"{path} has no readable manifest.json: {exc}") from None
    if manifest.get("version") != version:
        raise BucketError(f"{path} holds version {manifest.get('version')}, expected {version}")
    names = sorted(n for n in os.listdir(fd) if n.startswith("bucket_") and n.endswith(".safetensors"))
    if len(names) != manifest.get("buckets"):
        raise BucketError(f"{path} has {len(names)} bucket files, its manifest lists {manifest.get('buckets')}")
    try:
        return [read(n) for n in names]
    except OSError as exc:
        raise BucketError(f"{path}: a bucket file could not be read: {exc}") from None


def _swapped(path: Path, fd: int) -> bool:
    """True if ``path`` now names a different directory from the one open as ``fd``."""
    try:
        now = os.stat(path)
    except OSError:
        return False
    was = os.fstat(fd)
    return (now.st_dev, now.st_ino) != (was.st_dev, was.st_ino)


def prune(root: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` versions' directories (every part of a version stays or goes)."""
    dirs = sorted(Path(root).glob("v[0-9]*"))
    versions = sorted({d.name[:7] for d in dirs})
    kept = set(versions[max(0, len(versions) - keep):])
    for old in dirs:
        if old.name[:7] not in kept:
            shutil.rmtree(old, ignore_errors=True)


class FilesystemSync(WeightSync):
    method = "filesystem"

    def __init__(
        self,
        shared_dir: str | Path,
        bucket_mb: float = 64.0,
        *,
        probe: ProbeSpec | None = DEFAULT_PROBE,
        timeout_s: float = 600.0,
        keep: int = 2,
    ):
        super().__init__(bucket_mb, probe, timeout_s)
        self.root = Path(shared_dir)
        self.keep = keep

    def stage(self, learner: LearnerHandle, pool: Any, version: int, part: Part) -> Staged:
        """Export one part and write it as a version directory (writing is part of the transfer)."""
        start = time.perf_counter()
        ex = learner.export(self.bucket_mb, version, part, timeout=self.timeout_s)
        export_s = time.perf_counter() - start
        if ex.blobs is not None:
            path = write_weights_dir(self.root, version, ex.blobs, part)
        else:  # written by a task next to the learner's buckets, not through the driver
            task = as_task(write_weights_dir).remote(str(self.root), version, ex.ref, part)
            path = ray_get(task, "write_weights_dir", self.timeout_s)
        load = Load(PATH_METHOD[part], path)
        return Staged(part, load, export_s, (ex.checksum, ex.bytes, ex.count), restore=load, where=path)

    def after_push(self) -> None:
        prune(self.root, self.keep)
