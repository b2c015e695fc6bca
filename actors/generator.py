"""Generator actors: one engine per actor, and a pool that shards prompts over R replicas.

``GeneratorActor`` is a thin adapter: it sets its threads, owns one engine (:mod:`selfplay.generate`,
vLLM or HF) and forwards calls, so the engine code runs the same in-process (tests) and in an actor.
``GeneratorPool`` places R of them in a placement group (:func:`place_generators`,
``resources.placement``: pack or spread) and runs a generate call as a queue of
shards (``generation.shard_size`` prompts): each replica pulls the next shard when it finishes one, so
replicas of different speed stay busy, and each finished shard is written at once (atomically) when a
shard directory is given. A crash loses at most the shards in flight; the next call on the same
directory generates only the missing ones. Every wait has a timeout and errors name the actor and method.

Fault tolerance (the loop itself is :mod:`actors.shard_run`):

* Replicas are created with ``max_restarts`` (``resources.max_restarts``, default 3) and
  ``max_task_retries=0``: Ray restarts a dead replica's process, but a call that was running on it fails
  instead of being replayed blindly, so the pool decides what to redo: only that replica's shard.
* The pool is the one owner of what every replica holds: every weight load goes through it (a sync's
  parts, :meth:`GeneratorPool.load`, staged by the sync method as its strategy; ``load_dir``;
  ``load_buckets``), and it records the version, the checksum and where the weights can be had again
  (:class:`PolicySource`): the directory the learner saved them to when it has one
  (``LearnerHandle.directory``), else what the sync left (the object-store buckets, the filesystem
  sync's version directory). No caller tells the pool what it holds.
* A restarted replica starts from its constructor arguments (the pool's first policy); ``restore``
  reloads what the pool recorded and verifies the version (and checksum). After an adapter-only LoRA
  sync that is the base plus the adapter served on it, so a restarted replica gets base + current adapter.
* Restarts are noticed by each replica's Ray worker id: ``heal`` (run before ``generate`` and
  ``expect_version``) restores any replica whose process changed since the pool last saw it.
* Placement: one placement group of R bundles, ``resources.placement`` (pack | spread | strict_pack |
  strict_spread); ``resources.generator_resources`` adds custom resources to each bundle, which is how
  a recipe pins generators to a class of nodes (node affinity without naming node ids).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from safetensors.torch import load_file

from actors.shard_run import run_shards
from selfplay.config.cores import count, generator_threads
from selfplay.generate import Completion, Sampling, make_engine
from selfplay.generate.shards import completed_shards, plan_shards, read_shard, shard_path
from selfplay.remote import RemoteCallError, call_all, ray_get
from selfplay.sync.base import Load, Staged, SyncError
from selfplay.sync.buckets import pack_buckets
from selfplay.sync.filesystem import read_weights_dir
from selfplay.sync.nccl import BroadcastEndpoint
from selfplay.sync.verify import check_loaded, check_versions

log = logging.getLogger(__name__)


# Idempotent methods wait out a restart (Ray retries them on the restarted process); ``generate`` is not
# retried by Ray: the pool decides which shard to generate again (``actors.shard_run``).
_RETRY = {"max_task_retries": -1}


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
        self.model_path = str(model_path)
        self.engine = make_engine(backend, model_path, version=version, **(engine_kwargs or {}))
        self._broadcast = None
        self._fault: tuple[str, str, float] | None = None

    @ray.method(**_RETRY)
    def ready(self) -> bool:
        return True

    def generate(
        self, prompts: list[Any], sampling: Sampling, first_index: int = 0
    ) -> list[list[Completion]]:
        self._maybe_fault("generate")
        return self.engine.generate(prompts, sampling, first_index)

    def load_buckets(self, blobs: Any, version: int) -> str:
        """Load buckets given as bytes, ObjectRefs to bytes, or one ObjectRef to them all (fetched here, not
        via the driver; a restore passes the pool's ref inside its ``Load``, where Ray does not resolve it)."""
        return self.engine.load_buckets(_fetched(blobs), version)

    def load_path(self, path: str, version: int) -> str:
        """Load a filesystem sync's version directory (``selfplay.sync.filesystem``)."""
        return self.engine.load_buckets(read_weights_dir(path, version), version)

    def load_adapter(self, blobs: Any, version: int) -> str:
        """Serve a LoRA adapter (its buckets, given as ``load_buckets`` takes them) on the base this engine holds."""
        return self.engine.load_adapter(_fetched(blobs), version)

    def load_adapter_path(self, path: str, version: int) -> str:
        return self.engine.load_adapter(read_weights_dir(path, version), version)

    @ray.method(**_RETRY)
    def load_adapter_dir(self, path: str, version: int) -> str:
        """Serve a PEFT adapter directory (``adapter_model.safetensors``) through the verified adapter path."""
        tensors = load_file(str(Path(path) / "adapter_model.safetensors"))
        return self.engine.load_adapter(list(pack_buckets(tensors.items(), version=version)), version)

    @ray.method(**_RETRY)
    def load_dir(self, path: str, version: int) -> str:
        """Load a Hugging Face directory's weights into the running engine, through the same verified
        bucket path as a sync (so no engine needs a second way in)."""
        tensors: dict[str, Any] = {}
        for f in sorted(Path(path).glob("*.safetensors")):
            tensors.update(load_file(f))
        if not tensors:
            raise FileNotFoundError(f"{path} holds no *.safetensors weights")
        return self.engine.load_buckets(list(pack_buckets(tensors.items(), version=version)), version)

    @ray.method(**_RETRY)
    def restore(self, version: int, weights: Load, adapter: Load | None = None) -> dict[str, Any]:
        """Bring this (restarted) replica to ``version``: the ``weights`` load (nothing to load when it is
        the directory this replica was started from, at that version or under an adapter), then the
        ``adapter`` load on top when given. Returns ``info``."""
        started_on = weights.method == "load_dir" and weights.source == self.model_path
        if not started_on or (adapter is None and self.engine.version != version):
            getattr(self, weights.method)(weights.source, version)
        if adapter is not None:
            getattr(self, adapter.method)(adapter.source, version)
        return self.info()

    @ray.method(**_RETRY)
    def probe_logps(self, sequences: list[list[int]]) -> list[list[float]]:
        return self.engine.probe_logps(sequences)

    @ray.method(**_RETRY)
    def info(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {
            **self.engine.info(),
            "name": self.name,
            "node": ray.util.get_node_ip_address(),
            "node_id": ctx.get_node_id(),
            "worker_id": ctx.get_worker_id(),  # changes when Ray restarts this actor
            "restarted": ctx.was_current_actor_reconstructed,
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),  # what setup_env set: the resolved generator threads
        }

    # --- fault injection (tests): state of this process only, so a restarted replica is healthy
    def inject_fault(self, method: str, action: str, delay_s: float = 0.0) -> None:
        """The next ``method`` call waits ``delay_s`` seconds, then ``exit``: the process ends as in a
        crash (no cleanup, no exception), or ``hang``: it keeps waiting (about 3 hours)."""
        if action not in ("exit", "hang"):
            raise ValueError(f"action must be exit or hang, got {action!r}")
        self._fault = (method, action, delay_s)

    def _maybe_fault(self, method: str) -> None:
        if self._fault is None or self._fault[0] != method:
            return
        _, action, delay_s = self._fault
        self._fault = None
        time.sleep(delay_s)
        if action == "exit":
            os._exit(1)
        time.sleep(10_000)

    # --- broadcast sync (selfplay.sync.nccl): this actor is one receiving rank
    def broadcast_join(
        self, host: str, port: int, world_size: int, rank: int, backend: str, timeout_s: float
    ) -> bool:
        self._broadcast = BroadcastEndpoint(host, port, world_size, rank, backend, timeout_s)
        return True

    def broadcast_receive(self, version: int) -> str:
        if self._broadcast is None:
            raise RuntimeError(f"{self.name} has not joined a broadcast group (broadcast_join)")
        return self.engine.load_buckets(self._broadcast.receive(), version)


def _fetched(blobs: Any) -> Sequence[Any]:
    """Buckets from what a load was given: the buckets, ObjectRefs to each, or one ObjectRef to the list."""
    if isinstance(blobs, ray.ObjectRef):
        return ray.get(blobs)
    if blobs and isinstance(blobs[0], ray.ObjectRef):
        return ray.get(list(blobs))
    return blobs


@dataclass(frozen=True)
class PolicySource:
    """What every replica holds, and where a restarted one gets it again: the ``weights`` load (the whole
    policy, or the base under the adapter), then the ``adapter`` load on top (adapter-only LoRA sync).
    ``weights`` None: nowhere known (a broadcast from a learner that saved nothing)."""

    version: int
    weights: Load | None
    adapter: Load | None = None
    checksum: str | None = None  # what the replicas answered when they loaded it (None: not checked on restore)

    @property
    def base(self) -> str | None:
        """The Hugging Face directory of the weights under the adapter (or of the whole policy), when known."""
        w = self.weights
        return w.source if w is not None and w.method == "load_dir" else None


def place_generators(gen_cfg: Any, resources: Any, timeout_s: float) -> tuple[Any, list[dict[str, Any]]]:
    """Reserve one placement group of ``gen_cfg.replicas`` bundles (``resources.placement``, custom
    ``resources.generator_resources`` in each) and return it with each replica's actor options."""
    cpus = getattr(resources, "generator_cpus", 1.0)
    gpus = getattr(resources, "generator_gpus", 0.0) * gen_cfg.tensor_parallel_size
    custom = dict(getattr(resources, "generator_resources", None) or {})
    strategy = str(getattr(resources, "placement", "pack")).upper()
    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **custom}
    tag = uuid.uuid4().hex[:8]  # Ray names (`ray list actors`/`placement-groups`, fault tests)
    replicas = count(gen_cfg.replicas)
    pg = placement_group([bundle] * replicas, strategy=strategy, name=f"selfplay-generators-{tag}")
    ray_get(pg.ready(), f"placement group of {replicas} generators {bundle} ({strategy})", timeout_s)
    return pg, [
        {"name": f"selfplay-generator-{tag}-{i}", "num_cpus": cpus, "num_gpus": gpus or None,
         "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)}
        for i in range(replicas)
    ]


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
        shard_retries: int = 2,
        engine_kwargs: dict[str, Any] | None = None,
    ):
        self.max_restarts = int(getattr(resources, "max_restarts", 3))
        self.gen_cfg = gen_cfg
        self.start_timeout_s, self.shard_timeout_s = start_timeout_s, shard_timeout_s
        self.call_timeout_s, self.shard_retries = call_timeout_s, shard_retries
        self.names = [f"generator-{i}" for i in range(count(gen_cfg.replicas))]
        self._pg, placed = place_generators(gen_cfg, resources, start_timeout_s)
        kwargs = {"dtype": dtype, "max_model_len": gen_cfg.max_model_len, "seed": seed, **(engine_kwargs or {})}
        if gen_cfg.backend == "vllm":
            kwargs["tensor_parallel_size"] = gen_cfg.tensor_parallel_size
        threads = generator_threads(resources)
        cls = ray.remote(GeneratorActor)
        self.actors = [
            cls.options(**options, max_restarts=self.max_restarts, max_task_retries=0)
            .remote(name, str(model_path), gen_cfg.backend, version, threads, kwargs)
            for name, options in zip(self.names, placed)
        ]
        call_all(self._named(), "ready", (), start_timeout_s)
        self.policy = PolicySource(version, Load("load_dir", str(model_path)))
        self._workers = [i["worker_id"] for i in self.info()]
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
        reused and only missing ones generated; without it (evaluation, the LLM judge), the prompts are
        cut into at least one shard per replica (each prompt's seed is its index, so the cut changes no
        sample). ``on_shard(index)`` runs after each shard is stored.
        A replica that dies meanwhile is restored and only its unfinished shard is generated again.
        """
        start = time.perf_counter()
        prompts = list(prompts)
        self.heal()
        version = self.version()
        size = self.gen_cfg.shard_size
        if shard_dir is None:  # nothing to resume from: at least one shard per replica, so every one works
            size = max(1, min(size, -(-len(prompts) // len(self.actors))))
        shards = plan_shards(prompts, size, sampling, version)
        set_aside: list[str] = []
        done = completed_shards(shard_dir, shards, set_aside) if shard_dir is not None else set()
        todo = [s for s in shards if s.index not in done]
        results, facts = run_shards(self, prompts, sampling, todo, version, shard_dir, on_shard)
        out: list[list[Completion]] = []
        for s in shards:
            out.extend(results[s.index] if s.index in results else read_shard(shard_path(shard_dir, s.index)))
        self.last_run = {"shards": len(shards), "generated": [s.index for s in todo], "reused": sorted(done),
                         **({"unreadable": set_aside} if set_aside else {}), **facts}
        return out, time.perf_counter() - start

    # --- restarts
    def submit_restore(self, a: int, version: int) -> Any:
        """Start restoring replica ``a`` (restarted by Ray) to the pool's policy; returns the call's ref.
        Waiting for the restarted process is part of the call: Ray queues it until the actor is back."""
        p = self.policy
        if p.version != version or p.weights is None:
            knows = "of no source for it" if p.version == version else f"only where version {p.version} is"
            raise RemoteCallError(
                f"{self.names[a]} must be restored to version {version}, but the pool knows {knows}: only "
                "weights loaded through the pool (a sync, load_dir, load_buckets) can be restored")
        return self.actors[a].restore.remote(p.version, p.weights, p.adapter)

    def check_restored(self, a: int, ref: Any, version: int) -> dict[str, Any]:
        """Wait for :meth:`submit_restore`'s call and verify the replica holds ``version`` (and checksum)."""
        name = self.names[a]
        info = ray_get(ref, f"{name}.restore(version {version})", self.start_timeout_s)
        p = self.policy
        if info.get("version") != version or (p.checksum is not None and info.get("checksum") != p.checksum):
            raise SyncError(f"{name} was restarted and restored to version {info.get('version')} (checksum "
                            f"{str(info.get('checksum'))[:12]}), expected {version} ({str(p.checksum)[:12]})")
        self._workers[a] = info["worker_id"]
        log.warning("%s was restarted by Ray and restored to policy version %d", name, version)
        return info

    def heal(self) -> list[str]:
        """Restore every replica whose process changed since the pool last saw it; returns their names.

        A restarted replica that already holds what the others hold (a sync reached it after its restart)
        is accepted as it is. Raises when the pool cannot tell where the current version's weights are.
        """
        infos = call_all(self._named(), "info", (), self.start_timeout_s)
        restarted = [a for a, info in enumerate(infos) if info["worker_id"] != self._workers[a]]
        if not restarted:
            return []
        healthy = [infos[a] for a in range(len(infos)) if a not in restarted]
        version = healthy[0]["version"] if healthy else self.policy.version
        refs = {}
        for a in restarted:
            same = healthy and (infos[a]["version"], infos[a]["checksum"]) == (version, healthy[0]["checksum"])
            if same:
                self._workers[a] = infos[a]["worker_id"]
            else:
                refs[a] = self.submit_restore(a, version)
        for a, ref in refs.items():
            self.check_restored(a, ref, version)
        return [self.names[a] for a in restarted]

    def kill_replica(self, a: int) -> None:
        """End replica ``a``'s process now (a hung engine); Ray restarts it and ``heal`` restores it.

        ``ray.kill`` only asks: a call sent right after it can still reach the old process and answer as if
        nothing happened, so this returns once a probe no longer reaches the old process (it fails, or a
        restarted process answers), and ``heal`` right after it sees the restart."""
        ray.kill(self.actors[a], no_restart=False)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            try:
                worker = ray.get(self.actors[a].info.remote(), timeout=max(0.1, deadline - time.monotonic()))
            except ray.exceptions.RayError:  # the old process is gone (or the probe timed out: nothing to wait on)
                return
            if worker["worker_id"] != self._workers[a]:
                return
            time.sleep(0.05)

    # --- weights and state: every load into a replica is one of these
    def load(self, staged: Staged, version: int, timeout: float) -> list[str]:
        """Load one staged part of a sync (the sync method, :class:`~selfplay.sync.strategy.WeightSync`, is
        the strategy that staged it) into every replica as ``version``; returns the checksums they loaded.

        A load replaces every weight, so one whose replica Ray restarts meanwhile is sent again. A
        broadcast's receives are started first, then its ``send`` runs. Each replica's answer must be the
        learner's checksum (else :class:`~selfplay.sync.base.SyncError`, and nothing is recorded). The pool
        then holds ``staged.restore`` as where the part comes from again: the whole policy
        (``policy``/``base``), or the adapter on the weights it held."""
        load = staged.load
        if staged.send is None:
            checksums = call_all(self._named(), load.method, (load.source, version), timeout, retry_dead=True)
        else:
            refs = [getattr(a, load.method).remote(version) for a in self.actors]
            staged.send()
            checksums = [ray_get(ref, f"{name}.{load.method}", timeout) for name, ref in zip(self.names, refs)]
        if staged.summary is not None:  # a sync: every replica must have loaded exactly the learner's bytes
            check_loaded(self.names, checksums, staged.summary[0], version)
        # a restore that replays this very load must answer the same checksum; one from another form of the
        # weights (the learner's directory) packs them differently, so only its version is checked
        checksum = checksums[0] if checksums and staged.restore is load else None
        if staged.part == "adapter":
            self.policy = PolicySource(version, self.policy.weights, staged.restore, checksum)
        else:
            self.policy = PolicySource(version, staged.restore, None, checksum)
        return checksums

    def join_broadcast(self, host: str, port: int, world_size: int, backend: str, timeout_s: float,
                       learner_join: Callable[[], Any]) -> None:
        """Every replica joins a broadcast sync's process group as ranks 1..R; ``learner_join`` (rank 0) runs
        once their joins are under way (gloo connects all ranks at once)."""
        refs = [a.broadcast_join.remote(host, port, world_size, r + 1, backend, timeout_s)
                for r, a in enumerate(self.actors)]
        learner_join()
        for name, ref in zip(self.names, refs):
            ray_get(ref, f"{name}.broadcast_join", timeout_s)

    def load_buckets(self, blobs: Any, version: int) -> list[str]:
        """Load buckets (bytes, or an ObjectRef to them) into every replica; they stay in the object store
        as the policy a restarted replica reloads."""
        ref = blobs if isinstance(blobs, ray.ObjectRef) else ray.put(list(blobs))
        source = Load("load_buckets", ref)
        return self.load(Staged("policy", source, 0.0, None, restore=source), version, self.call_timeout_s)

    def load_dir(self, path: str | Path, version: int) -> list[str]:
        """Load a Hugging Face directory into every replica as ``version`` (verified like a sync); it becomes
        the policy a restarted replica reloads."""
        source = Load("load_dir", str(path))
        return self.load(Staged("policy", source, 0.0, None, restore=source), version, self.call_timeout_s)

    def probe_logps(self, sequences: list[list[int]], timeout: float | None = None) -> list[list[list[float]]]:
        return call_all(self._named(), "probe_logps", (sequences,), timeout or self.call_timeout_s)

    def info(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return call_all(self._named(), "info", (), timeout or self.call_timeout_s)

    def _named(self) -> list[tuple[str, Any]]:
        return list(zip(self.names, self.actors))

    def version(self) -> int:
        versions = {i["version"] for i in self.info()}
        if len(versions) != 1:
            raise SyncError(f"generators disagree on the policy version: {sorted(versions)}")
        return versions.pop()

    def expect_version(self, version: int, checksum: str | None = None) -> None:
        """Raise :class:`~selfplay.sync.base.SyncError` unless every replica holds ``version`` (replicas
        restarted since the last call are restored first)."""
        self.heal()
        check_versions(self, version, checksum, self.call_timeout_s)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        remove_placement_group(self._pg)
