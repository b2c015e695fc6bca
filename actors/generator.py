"""Generator actors: one engine per actor, and a pool that shards prompts over R replicas.

``GeneratorActor`` is a thin adapter (STYLE 7): it sets its threads, owns one engine
(:mod:`selfplay.generate`, vLLM or HF) and forwards calls. ``GeneratorPool`` places R of them in a
placement group (``resources.placement``: pack or spread) and runs a generate call as a queue of
shards (``generation.shard_size`` prompts): each replica pulls the next shard when it finishes one, so
replicas of different speed stay busy, and each finished shard is written at once (atomically) when a
shard directory is given. A crash loses at most the shards in flight; the next call on the same
directory generates only the missing ones. Every wait has a timeout and errors name the actor and method.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selfplay.generate import Completion, Sampling, make_engine
from selfplay.generate.shards import completed_shards, plan_shards, read_shard, shard_path, write_shard
from selfplay.sync.base import RemoteCallError, SyncError, call_all, ray_get, targets
from selfplay.sync.verify import check_versions


class GeneratorActor:
    """One generation engine. Methods mirror the engine's; ``load_*`` return the loaded checksum."""

    def __init__(
        self,
        name: str,
        model_path: str,
        backend: str = "vllm",
        version: int = 0,
        threads: int = 1,
        engine_kwargs: dict[str, Any] | None = None,
    ):
        from selfplay.env import setup_env

        setup_env(threads)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.name = name
        self.engine = make_engine(backend, model_path, version=version, **(engine_kwargs or {}))
        self._broadcast = None

    def ready(self) -> bool:
        return True

    def generate(
        self, prompts: list[Any], sampling: Sampling, first_index: int = 0
    ) -> list[list[Completion]]:
        return self.engine.generate(prompts, sampling, first_index)

    def load_buckets(self, blobs: Sequence[Any], version: int) -> str:
        """Load buckets given as bytes or as ObjectRefs to bytes (fetched here, not via the driver)."""
        import ray

        if blobs and isinstance(blobs[0], ray.ObjectRef):
            blobs = ray.get(list(blobs))
        return self.engine.load_buckets(blobs, version)

    def load_path(self, path: str, version: int) -> str:
        from selfplay.sync.filesystem import read_weights_dir

        return self.engine.load_buckets(read_weights_dir(path, version), version)

    def probe_logps(self, sequences: list[list[int]]) -> list[list[float]]:
        return self.engine.probe_logps(sequences)

    def info(self) -> dict[str, Any]:
        import ray

        return {
            **self.engine.info(),
            "name": self.name,
            "node": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
        }

    # --- broadcast sync (selfplay.sync.nccl): this actor is one receiving rank
    def broadcast_join(
        self, host: str, port: int, world_size: int, rank: int, backend: str, timeout_s: float
    ) -> bool:
        from selfplay.sync.nccl import BroadcastEndpoint

        self._broadcast = BroadcastEndpoint(host, port, world_size, rank, backend, timeout_s)
        return True

    def broadcast_receive(self, version: int) -> str:
        if self._broadcast is None:
            raise RuntimeError(f"{self.name} has not joined a broadcast group (broadcast_join)")
        return self.engine.load_buckets(self._broadcast.receive(), version)


class GeneratorPool:
    """R generator actors in a placement group; ``generate`` shards prompts across them."""

    def __init__(
        self,
        model_path: str | Path,
        gen_cfg: Any,
        resources: Any = None,
        *,
        version: int = 0,
        dtype: str = "auto",
        seed: int = 0,
        start_timeout_s: float = 600.0,
        shard_timeout_s: float = 1800.0,
        call_timeout_s: float = 600.0,
        engine_kwargs: dict[str, Any] | None = None,
    ):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cpus = getattr(resources, "generator_cpus", 1.0)
        gpus = getattr(resources, "generator_gpus", 0.0) * gen_cfg.tensor_parallel_size
        threads = getattr(resources, "threads_per_actor", 1)
        strategy = {"pack": "PACK", "spread": "SPREAD"}[getattr(resources, "placement", "pack")]
        self.gen_cfg = gen_cfg
        self.shard_timeout_s, self.call_timeout_s = shard_timeout_s, call_timeout_s
        bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        self._pg = placement_group([bundle] * gen_cfg.replicas, strategy=strategy)
        ray_get(
            self._pg.ready(), f"placement group of {gen_cfg.replicas} generators {bundle}", start_timeout_s
        )
        kwargs = {
            "dtype": dtype,
            "max_model_len": gen_cfg.max_model_len,
            "seed": seed,
            **(engine_kwargs or {}),
        }
        if gen_cfg.backend == "vllm":
            kwargs["tensor_parallel_size"] = gen_cfg.tensor_parallel_size
        cls = ray.remote(GeneratorActor)
        self.names = [f"generator-{i}" for i in range(gen_cfg.replicas)]
        self.actors = [
            cls.options(
                num_cpus=cpus,
                num_gpus=gpus or None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=i
                ),
            ).remote(name, str(model_path), gen_cfg.backend, version, threads, kwargs)
            for i, name in enumerate(self.names)
        ]
        call_all(targets(self), "ready", (), start_timeout_s)
        self.last_run: dict[str, Any] = {}

    def generate(
        self,
        prompts: Sequence[Any],
        sampling: Sampling,
        shard_dir: str | Path | None = None,
        on_shard: Callable[[int], None] | None = None,
    ) -> tuple[list[list[Completion]], float]:
        """``sampling.n`` completions per prompt, in prompt order, and the seconds it took.

        With ``shard_dir``, shards already there (from an interrupted call with the same request) are
        reused and only missing ones generated. ``on_shard(index)`` runs after each shard is stored.
        """
        import ray

        start = time.perf_counter()
        prompts = list(prompts)
        version = self.version()
        shards = plan_shards(prompts, self.gen_cfg.shard_size, sampling, version)
        done = completed_shards(shard_dir, shards) if shard_dir is not None else set()
        results: dict[int, list[list[Completion]]] = {}
        queue = deque(s for s in shards if s.index not in done)
        generated = [s.index for s in queue]
        idle = list(range(len(self.actors)))
        running: dict[Any, tuple[int, Any]] = {}
        while queue or running:
            while idle and queue:
                a, s = idle.pop(0), queue.popleft()
                ref = self.actors[a].generate.remote(prompts[s.start : s.stop], sampling, s.start)
                running[ref] = (a, s)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=self.shard_timeout_s)
            if not ready:
                busy = ", ".join(f"{self.names[a]} (shard {s.index})" for a, s in running.values())
                raise RemoteCallError(
                    f"no shard finished within {self.shard_timeout_s:.0f} s; running: {busy}"
                )
            a, s = running.pop(ready[0])
            groups = ray_get(ready[0], f"{self.names[a]}.generate(shard {s.index})", self.call_timeout_s)
            if shard_dir is not None:
                write_shard(shard_dir, s, groups)
            results[s.index] = groups
            idle.append(a)
            if on_shard is not None:
                on_shard(s.index)
        out: list[list[Completion]] = []
        for s in shards:
            out.extend(results[s.index] if s.index in results else read_shard(shard_path(shard_dir, s.index)))
        self.last_run = {"shards": len(shards), "generated": generated, "reused": sorted(done)}
        return out, time.perf_counter() - start

    # --- weights and state
    def load_buckets(self, blobs: Any, version: int) -> list[str]:
        return call_all(targets(self), "load_buckets", (blobs, version), self.call_timeout_s)

    def probe_logps(self, sequences: list[list[int]]) -> list[list[list[float]]]:
        return call_all(targets(self), "probe_logps", (sequences,), self.call_timeout_s)

    def info(self) -> list[dict[str, Any]]:
        return call_all(targets(self), "info", (), self.call_timeout_s)

    def version(self) -> int:
        versions = {i["version"] for i in self.info()}
        if len(versions) != 1:
            raise SyncError(f"generators disagree on the policy version: {sorted(versions)}")
        return versions.pop()

    def expect_version(self, version: int, checksum: str | None = None) -> None:
        """Raise :class:`~selfplay.sync.base.SyncError` unless every replica holds ``version``."""
        check_versions(self, version, checksum, self.call_timeout_s)

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        remove_placement_group(self._pg)
