"""The learner handles: ``LocalLearner`` (in this process) and ``LearnerGroup`` (W DeepSpeed ranks as Ray actors).

Both implement :class:`~selfplay.sync.base.LearnerHandle`, the one interface the sync, export and stage
code call, so none of it asks which kind it has (RLlib's ``LearnerGroup`` with local or remote learners is
the model). What they share (the methods that only forward, and the bookkeeping of which weights they
hold: ``holds``, and ``saved``, the Hugging Face directory of exactly the current weights, which a weight
sync hands the generator pool as where a restarted generator gets them again) is written once, in
:class:`_Handle`; each kind implements how one call reaches the learner and how the weights leave it.

Ray side: ``LearnerActor`` is one DeepSpeed rank, ``LearnerGroup`` W of them.

The actor is thin: it pins its thread count, builds a :class:`selfplay.train.Learner` and forwards method
calls to it. ``LearnerGroup`` reserves a placement group (one bundle per rank, PACK or SPREAD), starts the
actors, lets rank 0 choose the rendezvous address (its node IP and a free port) and forms one DeepSpeed
world. Its methods mirror the Learner's: each call goes to every rank (DeepSpeed collectives need all of
them), waits with a timeout, and returns rank 0's result. A failure or a timeout raises
:class:`LearnerGroupError` (a :class:`~selfplay.remote.RemoteCallError`) naming the method, the rank and
the remote error's type and first line. Only the group holds the rank handles: a weight sync asks it
for ``export`` (rank 0's buckets, left in the object store) or ``broadcast_send``, so a rank that
dies during a sync is caught by the same bookkeeping as during training. ``holds`` says which weights
the ranks hold (the directory they were loaded from, or the checkpoint directory of the last round).

Failures (no rank is ever restarted in place: a DeepSpeed world cannot take a new member mid-round):

* A rank that dies or stops answering raises :class:`LearnerLostError` and marks the group unusable:
  the other ranks are usually stuck in a collective, so ``shutdown`` kills them at once instead of
  asking them to leave, and any further call raises at once. A new group resumes the round from its
  last checkpoint (``load_checkpoint`` then the same ``train_round``), ending with the same weights as
  an uninterrupted round; the driver does this by rerunning the stage.
* An error raised by the learner code on every rank together (``NonFiniteError`` from the numerical
  guard, a bad table) leaves the world consistent: the group stays usable, and the error names the
  step and its table rows. If only some ranks raised and the others do not finish within a short
  grace period, the group is treated as lost.

Placement: one bundle per rank, ``resources.placement`` (pack | spread | strict_*), plus
``resources.learner_resources`` (custom resources, i.e. node affinity) in every bundle. Rank actors are
named ``selfplay-learner-<group>-rank<r>`` so operators (``ray list actors``) and fault tests find them.

``LocalLearner`` runs one Learner (or anything with its methods, e.g. an HF engine in the sync tests) in
this process, with the same API and no Ray calls: tests and single-GPU machines.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from selfplay.config.cores import count
from selfplay.config.schema import ResourcesConfig
from selfplay.remote import RemoteCallError, all_ready, describe, first_ready, ray_get
from selfplay.sync.base import Exported, Part, summarize
from selfplay.sync.nccl import BroadcastEndpoint, BroadcastSenderMixin
from selfplay.sync.object_store import as_arrays

DEFAULT_TIMEOUT_S = 6 * 3600.0
SETUP_TIMEOUT_S = 900.0
QUICK_TIMEOUT_S = 600.0  # probe, export, save: no training inside
SETTLE_S = 30.0  # after one rank raises, how long the others get to finish before the group counts as lost


class LearnerGroupError(RemoteCallError):
    """A learner rank failed or did not answer in time."""


class LearnerLostError(LearnerGroupError):
    """A rank died or stopped answering: the group is unusable; a new one resumes from a checkpoint."""


@ray.remote
class LearnerActor(BroadcastSenderMixin):
    """One learner rank in its own process.

    ``export_summarized`` and ``probe_logps`` are actor methods of their own (not only via ``call``) so
    that the group can leave rank 0's buckets in the object store during a weight sync;
    ``BroadcastSenderMixin`` adds the NCCL-broadcast side of a sync.
    """

    def __init__(self, threads: int) -> None:
        from selfplay.env import setup_env

        setup_env(threads)
        self.threads = threads
        self.learner = None

    def rendezvous(self) -> tuple[str, int]:
        """This node's IP and a free port on it: where rank 0 hosts the process-group store."""
        from selfplay.train.engine import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, model_path: str, cfg: Any, rank: int, world_size: int, seed: int, master_addr: str,
              master_port: int, output_dir: str | None, timeout_s: float, tensorboard: bool = True) -> int:
        self.learner = _learner(model_path, cfg, rank=rank, world_size=world_size, seed=seed,
                                output_dir=output_dir, master_addr=master_addr, master_port=master_port,
                                threads=self.threads, timeout_s=timeout_s, tensorboard=tensorboard)
        return rank

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.learner, method)(*args, **kwargs)

    def export_weights(self, bucket_mb: float = 64.0, version: int = 0, dtype: str | None = None,
                       part: str = "policy") -> list[Any]:
        """The buckets as numpy ``uint8`` views (see ``export_summarized``)."""
        return as_arrays(self.learner.export_weights(bucket_mb, version, dtype, part=part))

    @ray.method(num_returns=2)
    def export_summarized(self, bucket_mb: float, version: int, part: str = "policy") -> tuple[list[Any], Any]:
        """The buckets (collective: every rank exports; rank 0 has them) and their small summary, as two
        objects: the group waits on the summary and leaves the buckets in the object store.

        The buckets are returned as numpy ``uint8`` views: Ray stores numpy arrays out of band (one copy
        into the store, none on the way out to a reader), where ``bytes`` would be pickled in band and
        copied again by every generator (``bench/sync.py`` measures the difference). Below ZeRO-3 they
        are split buckets viewing the parameters themselves, so Ray's copy into the store is the only copy
        (nothing runs on this actor between the return and that copy)."""
        blobs = self.learner.export_weights(bucket_mb, version, split=True, part=part)
        return as_arrays(blobs), summarize(blobs) if blobs else None

    def probe_logps(self, sequences: list[list[int]]) -> list[list[float]]:
        return self.learner.probe_logps(sequences)

    def info(self) -> dict[str, Any]:
        """Where this rank runs (node id and IP, process id)."""
        ctx = ray.get_runtime_context()
        return {"rank": None if self.learner is None else self.learner.rank, "node_id": ctx.get_node_id(),
                "node": ray.util.get_node_ip_address(), "pid": os.getpid()}


class _Handle:
    """What both learner handles share: the methods that only forward (through ``_call``), and which
    weights the learner holds. ``holds``: the directory its weights were loaded from or last saved to (a
    Hugging Face or checkpoint directory; None: unsaved). ``saved``: the Hugging Face directory holding
    exactly the current weights, or None (a round or a checkpoint load changed them since)."""

    def __init__(self, model_path: str | Path | None) -> None:
        self.holds: str | None = _str(model_path)
        self.saved: str | None = _str(model_path)

    def _call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _weights_changed(self, holds: str | None = None) -> None:
        self.holds, self.saved = holds, None

    # ------------------------------------------------------------------------------------ weight sync
    def directory(self, part: Part, *, timeout: float | None = None) -> str | None:
        """Where ``part`` of the current weights already is on disk (see ``LearnerHandle.directory``)."""
        if part == "base":
            return self.lora_base(timeout=timeout)
        if self.saved is None or part == "policy":
            return self.saved
        adapter = Path(self.saved) / "adapter"
        return str(adapter) if adapter.is_dir() else None

    # ------------------------------------------------------------------------------- learner methods
    def reload(self, model_path: str | Path, cfg: Any = None, *, timeout: float | None = None) -> None:
        """Rebuild the learner's engine from a model directory (optionally another TrainConfig)."""
        self._call("reload", str(model_path), cfg, timeout=timeout or QUICK_TIMEOUT_S)
        self.holds = self.saved = str(model_path)

    def train_round(self, pairs: Any, cfg: Any = None, *, checkpoint_dir: str | Path | None = None,
                    on_step: Any = None, final_checkpoint: bool = True, timeout: float | None = None
                    ) -> dict[str, Any]:
        self._weights_changed()  # until the round's checkpoint (or the caller's save_hf) is written
        summary = self._call("train_round", pairs, cfg, checkpoint_dir=_str(checkpoint_dir), on_step=on_step,
                             final_checkpoint=final_checkpoint, timeout=timeout)
        self.holds = _str(checkpoint_dir) if final_checkpoint else None
        return summary

    def sft_round(self, examples: Any, cfg: Any = None, *, checkpoint_dir: str | Path | None = None,
                  on_step: Any = None, timeout: float | None = None) -> dict[str, Any]:
        self._weights_changed()
        summary = self._call("sft_round", examples, cfg, checkpoint_dir=_str(checkpoint_dir), on_step=on_step,
                             timeout=timeout)
        self.holds = _str(checkpoint_dir)
        return summary

    def export_weights(self, bucket_mb: float = 64.0, version: int = 0, dtype: str | None = None, *,
                       timeout: float | None = None) -> list[Any]:
        return self._call("export_weights", bucket_mb, version, dtype, timeout=timeout or QUICK_TIMEOUT_S)

    def lora_base(self, *, timeout: float | None = None) -> str | None:
        """The directory holding exactly the learners' base weights (LoRA; see ``Learner.lora_base``)."""
        return self._call("lora_base", timeout=timeout or QUICK_TIMEOUT_S)

    def save_hf(self, out_dir: str | Path, dtype: str | None = None, *, timeout: float | None = None) -> str:
        path = self._call("save_hf", str(out_dir), dtype, timeout=timeout or QUICK_TIMEOUT_S)
        if dtype is None:  # the weights as trained: a learner rebuilt from this directory holds the same
            self.holds = self.saved = str(out_dir)
        return path

    def save_checkpoint(self, ckpt_dir: str | Path, *, timeout: float | None = None) -> str:
        return self._call("save_checkpoint", str(ckpt_dir), timeout=timeout or QUICK_TIMEOUT_S)

    def load_checkpoint(self, ckpt_dir: str | Path, *, timeout: float | None = None) -> dict[str, Any]:
        self._weights_changed()
        info = self._call("load_checkpoint", str(ckpt_dir), timeout=timeout or QUICK_TIMEOUT_S)
        self.holds = str(ckpt_dir)
        return info

    def probe_logps(self, sequences: list[list[int]], *, timeout: float | None = None) -> list[list[float]]:
        return self._call("probe_logps", sequences, timeout=timeout or QUICK_TIMEOUT_S)

    def set_counters(self, rounds: int, global_step: int, *, timeout: float | None = None) -> None:
        """Continue the run's round and step numbering (see ``Learner.set_counters``)."""
        return self._call("set_counters", int(rounds), int(global_step), timeout=timeout or QUICK_TIMEOUT_S)

    def set_metrics_dir(self, out_dir: str | Path | None, *, timeout: float | None = None) -> None:
        """Send ``train_metrics.jsonl``/TensorBoard output to ``out_dir`` from now on (rank 0 writes)."""
        return self._call("set_metrics_dir", _str(out_dir), timeout=timeout or QUICK_TIMEOUT_S)


class LocalLearner(_Handle):
    """One learner in this process (a :class:`selfplay.train.Learner`, or anything with its methods, such
    as an HF engine standing in for it in the sync tests). ``timeout`` is accepted and ignored: a call here
    is a function call. ``saved``: the directory holding exactly its current weights, when one does."""

    lost: str | None = None  # an in-process learner is never lost: a failure is an exception here

    def __init__(self, learner: Any, *, saved: str | Path | None = None) -> None:
        super().__init__(saved)
        self.learner = learner
        self._broadcast: BroadcastEndpoint | None = None

    @classmethod
    def start(cls, model_path: str | Path, cfg: Any, run_seed: int = 0, *, output_dir: str | Path | None = None,
              tensorboard: bool = True, threads: int | None = None) -> LocalLearner:
        """A :class:`selfplay.train.Learner` built here from ``model_path`` (world size 1, no Ray); ``threads``
        defaults to ``resources.threads_per_actor``'s default."""
        threads = count(ResourcesConfig().threads_per_actor) if threads is None else threads
        learner = _learner(model_path, cfg, seed=run_seed, output_dir=_str(output_dir), tensorboard=tensorboard,
                           threads=threads)
        return cls(learner, saved=model_path)

    def _call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return getattr(self.learner, method)(*args, **kwargs)

    def export(self, bucket_mb: float, version: int, part: Part = "policy", *,
               timeout: float | None = None) -> Exported:
        blobs = list(self.learner.export_weights(bucket_mb, version, **_part(part)))
        return Exported(blobs, None, *summarize(blobs))

    def broadcast_join(self, host: str, port: int, world_size: int, rank: int, backend: str, timeout_s: float,
                       *, timeout: float | None = None) -> bool:
        """This process is ``rank`` (0: the sender) of a broadcast sync's group."""
        self._broadcast = BroadcastEndpoint(host, port, world_size, rank, backend, timeout_s)
        return True

    def broadcast_send(self, bucket_mb: float, version: int, *,
                       timeout: float | None = None) -> tuple[str, int, int] | None:
        blobs = list(self.learner.export_weights(bucket_mb, version))
        if self._broadcast is None:
            raise RuntimeError("LocalLearner.broadcast_send before broadcast_join")
        self._broadcast.send(blobs)
        return summarize(blobs)

    def prescore(self, sequences: pa.Table, cfg: Any = None) -> None:
        """Nothing: ``compute_reference`` scores every group (in-process there is no other worker to do it
        while the generators sample)."""

    def compute_reference(self, pairs: Any, model_path: str | Path | None = None, cfg: Any = None, *,
                          as_reference: bool = True, only_rejected: bool = False,
                          groups: list[pa.Table] | None = None, timeout: float | None = None) -> pa.Table:
        return self.learner.compute_reference(pairs, _str(model_path), cfg, as_reference=as_reference,
                                              only_rejected=only_rejected, groups=groups)

    def info(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return [{"rank": 0, "node_id": None, "node": None, "pid": os.getpid()}]

    def shutdown(self) -> None:
        self.learner.shutdown()


class LearnerGroup(_Handle):
    """W learner ranks forming one DeepSpeed world; methods broadcast to every rank and return rank 0's result."""

    def __init__(self, model_path: str | Path, cfg: Any, num_learners: int = 1,
                 resources: ResourcesConfig | None = None, run_seed: int = 0, *,
                 output_dir: str | Path | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 setup_timeout_s: float = SETUP_TIMEOUT_S, tensorboard: bool = True) -> None:
        super().__init__(model_path)
        self.resources = resources or ResourcesConfig(learners=num_learners)
        self.num_learners = num_learners
        self.timeout_s = timeout_s
        self.actors: list[Any] = []
        self.placement_group = None
        self.lost: str | None = None  # why the group is unusable (a rank died or hung), else None
        self._prescoring: list[Any] = []  # queued prescore calls (see prescore)
        self._start(str(model_path), cfg, run_seed, _str(output_dir), setup_timeout_s, tensorboard)

    def _start(self, model_path: str, cfg: Any, seed: int, output_dir: str | None, setup_timeout_s: float,
               tensorboard: bool = True) -> None:
        res = self.resources
        custom = dict(res.learner_resources or {})
        bundle = {"CPU": res.learner_cpus, **({"GPU": res.learner_gpus} if res.learner_gpus else {}), **custom}
        tag = uuid.uuid4().hex[:8]  # Ray names (`ray list actors`/`placement-groups`, fault tests)
        self.placement_group = placement_group([dict(bundle)] * self.num_learners, strategy=res.placement.upper(),
                                               name=f"selfplay-learners-{tag}")
        try:
            ray.get(self.placement_group.ready(), timeout=setup_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise LearnerGroupError(f"LearnerGroup: no room for {self.num_learners} learner(s) of {bundle} "
                                    f"within {setup_timeout_s:.0f}s (placement {res.placement})") from None
        threads = count(res.threads_per_actor)
        for rank in range(self.num_learners):
            strategy = PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=rank)
            self.actors.append(LearnerActor.options(
                num_cpus=res.learner_cpus, num_gpus=res.learner_gpus, scheduling_strategy=strategy,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}},
                name=f"selfplay-learner-{tag}-rank{rank}",
            ).remote(threads))
        addr, port = self._gather("rendezvous", [self.actors[0].rendezvous.remote()], setup_timeout_s)[0]
        refs = [actor.setup.remote(model_path, cfg, rank, self.num_learners, seed, addr, port, output_dir,
                                   setup_timeout_s, tensorboard)
                for rank, actor in enumerate(self.actors)]
        self._gather("setup", refs, setup_timeout_s)

    # ------------------------------------------------------------------------------------- plumbing
    def _call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        self._check_usable(method)
        # Large arguments (a pairs table) go to the object store once, not once per rank.
        args = tuple(ray.put(a) if isinstance(a, pa.Table | list) else a for a in args)
        refs = [actor.call.remote(method, *args, **kwargs) for actor in self.actors]
        return self._gather(method, refs, timeout or self.timeout_s)[0]

    def _check_usable(self, method: str) -> None:
        if self.lost is not None:
            raise LearnerLostError(f"LearnerGroup.{method}: the group is unusable since {self.lost}; shut it down "
                                   "and start a new group (load_checkpoint resumes the round)")

    def _gather(self, method: str, refs: list[Any], timeout: float) -> list[Any]:
        """Results of ``refs`` in rank order; the first failure or the deadline raises naming the rank."""
        pending = {ref: rank for rank, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        deadline = time.monotonic() + timeout
        while pending:
            ref = first_ready(list(pending), deadline - time.monotonic())
            if ref is None:
                ranks = sorted(pending.values())
                raise self._lose(f"LearnerGroup.{method}: rank(s) {ranks} did not answer within {timeout:.0f}s")
            rank = pending.pop(ref)
            try:
                results[rank] = ray_get(ref, f"LearnerGroup.{method}", max(1.0, deadline - time.monotonic()))
            except RemoteCallError as exc:
                raise self._failed(method, rank, exc, pending, timeout) from exc.__cause__
        return results

    def _failed(self, method: str, rank: int, exc: RemoteCallError, pending: dict[Any, int],
                timeout: float) -> LearnerGroupError:
        """The error for a rank's failed call; a rank that died or hung, or a failure the other ranks do
        not finish after, marks the group lost."""
        if exc.kind == "timeout":
            return self._lose(f"LearnerGroup.{method}: rank {rank} did not answer within {timeout:.0f}s")
        if exc.actor_lost:
            return self._lose(f"LearnerGroup.{method} failed on rank {rank}: its actor died "
                              f"({describe(exc.__cause__)})")
        message = f"LearnerGroup.{method} failed on rank {rank}: {describe(exc.__cause__)}"
        if not self._settled(pending):
            return self._lose(message + "; the other ranks did not finish")
        return LearnerGroupError(message)

    def _lose(self, message: str) -> LearnerLostError:
        self.lost = message
        return LearnerLostError(message, "died")

    def _settled(self, pending: dict[Any, int]) -> bool:
        """After one rank raised: did every other rank finish (together, so the world is consistent)?"""
        if not pending:
            return True
        if not all_ready(list(pending), SETTLE_S):
            return False
        for ref in pending:
            try:
                ray_get(ref, "LearnerGroup (settling)", 1.0)
            except RemoteCallError as exc:
                if exc.actor_lost:
                    return False
        return True

    # ------------------------------------------------------------------------------------ weight sync
    def export(self, bucket_mb: float, version: int, part: Part = "policy", *,
               timeout: float | None = None) -> Exported:
        """Every rank exports ``part`` (collective; see ``Learner.export_weights``); rank 0's buckets stay in
        the object store (never fetched here), with the summary rank 0 computed next to them."""
        self._check_usable("export_weights")
        pairs = [actor.export_summarized.remote(bucket_mb, version, part) for actor in self.actors]
        summaries = self._gather("export_weights", [s for _, s in pairs], timeout or QUICK_TIMEOUT_S)
        return Exported(None, pairs[0][0], *summaries[0])

    def broadcast_join(self, host: str, port: int, world_size: int, rank: int, backend: str, timeout_s: float,
                       *, timeout: float | None = None) -> bool:
        """Rank 0 joins a broadcast weight sync's process group (``selfplay.sync.nccl``) as its ``rank``."""
        self._check_usable("broadcast_join")
        ref = self.actors[0].broadcast_join.remote(host, port, world_size, rank, backend, timeout_s)
        return self._gather("broadcast_join", [ref], timeout or QUICK_TIMEOUT_S)[0]

    def broadcast_send(self, bucket_mb: float, version: int, *,
                       timeout: float | None = None) -> tuple[str, int, int] | None:
        """Every rank exports (collective) and rank 0 broadcasts; returns rank 0's bucket summary."""
        self._check_usable("broadcast_send")
        refs = [actor.broadcast_send.remote(bucket_mb, version) for actor in self.actors]
        return self._gather("broadcast_send", refs, timeout or QUICK_TIMEOUT_S)[0]

    # ------------------------------------------------------------------------------- learner methods
    def prescore(self, sequences: pa.Table, cfg: Any = None) -> None:
        """Queue ``Learner.prescore`` of one sequence group on every rank and return at once: the ranks
        score it while the caller goes on (the loop: while the generators sample the next shard). Their
        calls run in order, before any later call; a failure there only means that ``compute_reference``
        scores the group itself."""
        if self.lost is not None:
            return
        ref = ray.put(sequences)
        self._prescoring += [actor.call.remote("prescore", ref, cfg) for actor in self.actors]

    def compute_reference(self, pairs: Any, model_path: str | Path | None = None, cfg: Any = None, *,
                          as_reference: bool = True, only_rejected: bool = False,
                          groups: list[pa.Table] | None = None, timeout: float | None = None) -> pa.Table:
        prescoring, self._prescoring = self._prescoring, []
        table = self._call("compute_reference", pairs, _str(model_path), cfg, as_reference=as_reference,
                           only_rejected=only_rejected, groups=ray.put(groups) if groups else groups,  # once
                           timeout=timeout)
        for ref in prescoring:  # finished before compute_reference ran; their errors were harmless
            with contextlib.suppress(Exception):
                ray.get(ref, timeout=1.0)
        return table

    def info(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Per rank: rank, node id, node IP, process id (where the placement group put it)."""
        return self._gather("info", [a.info.remote() for a in self.actors], timeout or QUICK_TIMEOUT_S)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Leave the process group on every rank, then end the actors and free the placement group."""
        if self.actors:
            if self.lost is None:  # a lost group's ranks are stuck in a collective: no goodbye, just kill
                refs = [actor.call.remote("shutdown") for actor in self.actors]
                ray.wait(refs, num_returns=len(refs), timeout=timeout)
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None


def _part(part: Part) -> dict[str, Any]:
    """The export call's ``part`` keyword; none for ``policy``, so a learner stand-in without parts (an HF
    engine, the fault tests' wrappers) still answers a plain sync."""
    return {} if part == "policy" else {"part": part}


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _learner(*args: Any, **kwargs: Any) -> Any:
    """A :class:`selfplay.train.Learner`; DeepSpeed is imported where a learner is built, never by a driver
    that only talks to learner actors."""
    from selfplay.train import Learner

    return Learner(*args, **kwargs)
