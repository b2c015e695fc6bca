"""Generations on disk as parquet shards, written as they finish, so a crash loses only shards in flight.

Layout: ``<dir>/shard_{i:05d}.parquet``, shard ``i`` holding prompts ``[i * shard_size, ...)``, one row
per sample (columns of :class:`Completion`). Choices:

* Atomic: a shard is written to a temporary name in the same directory and renamed, so a shard file
  that exists is complete. Leftover temporary files are ignored (and removed by :func:`plan_shards`).
* Each shard's parquet metadata records what produced it: its range, the total shard count, ``n``,
  the policy version, the sampling fingerprint and a hash of its prompts. Resuming reuses a shard only
  if all of that matches the current request; a mismatch is an error naming the shard, because mixing
  two settings in one iteration would be silent corruption.
* A shard that cannot be read (a damaged file: bad magic bytes, cut short) is not trusted and not
  fatal: it is renamed aside (``shard_i.parquet.unreadable-<id>``, kept for inspection), logged with its
  path, and generated again like a missing one.
* :func:`read_generations` concatenates shards in prompt order and checks there are no gaps or
  duplicates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from selfplay.atomic import write_file
from selfplay.generate.types import Completion, Sampling, prompt_of
from selfplay.records import SHARD_SCHEMA

META_KEY = b"selfplay.shard"


class ShardError(RuntimeError):
    """Shards on disk that do not belong to the current request, or an incomplete set."""


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int
    meta: dict[str, Any]


def shard_path(directory: str | Path, index: int) -> Path:
    return Path(directory) / f"shard_{index:05d}.parquet"


def plan_shards(prompts: list[Any], shard_size: int, sampling: Sampling, version: int) -> list[Shard]:
    """The shards of a request, each with the metadata a reusable shard on disk must match."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    count = (len(prompts) + shard_size - 1) // shard_size
    shards = []
    for i in range(count):
        start, stop = i * shard_size, min((i + 1) * shard_size, len(prompts))
        h = hashlib.sha256()
        for p in prompts[start:stop]:
            h.update(json.dumps(prompt_of(p), ensure_ascii=False).encode() + b"\0")
        meta = {
            "index": i,
            "start": start,
            "stop": stop,
            "num_shards": count,
            "n": sampling.n,
            "policy_version": version,
            "sampling": sampling.fingerprint(),
            "prompts": h.hexdigest()[:16],
        }
        shards.append(Shard(i, start, stop, meta))
    return shards


log = logging.getLogger(__name__)


def _set_aside(path: Path, exc: Exception, set_aside: list[str] | None) -> None:
    dest = path.with_name(f"{path.name}.unreadable-{uuid.uuid4().hex[:8]}")
    os.replace(path, dest)
    log.warning("generation shard %s is unreadable (%s: %s); moved to %s and generated again",
                path, type(exc).__name__, exc, dest.name)
    if set_aside is not None:
        set_aside.append(str(path))


def completed_shards(directory: str | Path, shards: list[Shard], set_aside: list[str] | None = None) -> set[int]:
    """Indices of ``shards`` already on disk; a shard written by another request is a :class:`ShardError`.
    An unreadable shard is moved aside (its path appended to ``set_aside``) and counts as missing."""
    directory = Path(directory)
    if not directory.is_dir():
        return set()
    for tmp in directory.glob(".shard_*.tmp-*"):
        tmp.unlink(missing_ok=True)
    done = set()
    for shard in shards:
        path = shard_path(directory, shard.index)
        if not path.exists():
            continue
        try:
            meta = shard_meta(path)
        except (pa.ArrowException, OSError, ValueError) as exc:
            _set_aside(path, exc, set_aside)
            continue
        diff = sorted(k for k in shard.meta if meta.get(k) != shard.meta[k])
        if diff:
            raise ShardError(
                f"{path} was written by a different request (differs in {', '.join(diff)}); "
                f"remove {directory} to generate again"
            )
        try:
            read_shard(path)  # the footer alone can be intact while the data is not
        except (pa.ArrowException, OSError, ValueError) as exc:
            _set_aside(path, exc, set_aside)
            continue
        done.add(shard.index)
    return done


def write_shard(directory: str | Path, shard: Shard, groups: list[list[Completion]]) -> Path:
    """Write one shard atomically (temporary file in the same directory, then rename)."""
    got = [g[0].prompt_index if g else None for g in groups]
    if got != list(range(shard.start, shard.stop)) or any(len(g) != shard.meta["n"] for g in groups):
        raise ShardError(f"shard {shard.index}: results for prompts {got[:3]}... with "
                         f"{sorted({len(g) for g in groups})} samples each; expected prompts "
                         f"{shard.start}..{shard.stop - 1} with {shard.meta['n']} samples")
    rows = [c.to_row() for group in groups for c in group]
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    table = table.replace_schema_metadata({META_KEY: json.dumps(shard.meta).encode()})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return write_file(shard_path(directory, shard.index), lambda tmp: pq.write_table(table, tmp))


def shard_meta(path: str | Path) -> dict[str, Any]:
    raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    if raw is None:
        raise ShardError(f"{path} has no selfplay shard metadata")
    return json.loads(raw)


def read_shard(path: str | Path) -> list[list[Completion]]:
    """One shard's completions grouped by prompt (prompt order, sample order)."""
    meta = shard_meta(path)
    groups: list[list[Completion]] = [[] for _ in range(meta["stop"] - meta["start"])]
    for row in pq.read_table(path).to_pylist():
        groups[row["prompt_index"] - meta["start"]].append(Completion.from_row(row))
    for g in groups:
        g.sort(key=lambda c: c.sample_index)
        if [c.sample_index for c in g] != list(range(meta["n"])):
            raise ShardError(
                f"{path}: prompt {g[0].prompt_index if g else '?'} lacks some of its {meta['n']} samples"
            )
    return groups


def read_generations(directory: str | Path) -> list[list[Completion]]:
    """All shards of ``directory`` in prompt order; raises :class:`ShardError` on a gap or duplicate."""
    paths = sorted(Path(directory).glob("shard_*.parquet"))
    if not paths:
        raise ShardError(f"{directory} holds no generation shards")
    metas = [shard_meta(p) for p in paths]
    total = metas[0]["num_shards"]
    indices = [m["index"] for m in metas]
    if indices != list(range(total)):
        missing = sorted(set(range(total)) - set(indices))
        raise ShardError(f"{directory}: shards {missing} of {total} are missing")
    out: list[list[Completion]] = []
    for path, meta in zip(paths, metas):
        if meta["start"] != len(out):
            raise ShardError(f"{path} starts at prompt {meta['start']}, expected {len(out)}")
        out.extend(read_shard(path))
    return out
