"""A model judge (reward model or pairwise ranker) in a Ray actor: a thin host for library code.

``JudgeActor`` owns one resource, the judge model, and calls ``selfplay.judges.build_judge`` to make
it; the class is plain Python, so ``JudgeActor(cfg).score(groups)`` runs in-process exactly as the actor
does (tests compare the two). ``spawn_judge`` starts it under Ray with explicit CPUs and torch threads
and returns a ``RemoteJudge``, which has the ``Judge`` interface, so the driver cannot tell them apart.

Restarts: the actor is started with ``max_restarts`` and ``RemoteJudge.score`` sends the prompts in
chunks of ``CHUNK`` groups. When the actor dies, Ray restarts it (reloading the model) and only the
chunk that was in flight is sent again; chunks already scored are kept. A chunk is a multiple of any
batch size that divides 64 responses, so chunking does not change how the model batches.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from selfplay.judges.base import PromptGroup, Scores
from selfplay.remote import RemoteCallError, ray_get

CHUNK = 64  # prompt groups per remote call: what one death of the actor can cost


class JudgeActor:
    """Hosts one in-process model judge; ``threads`` pins torch/OpenMP threads in this process."""

    def __init__(self, cfg: Any, threads: int = 1) -> None:
        from selfplay.env import setup_env

        setup_env(threads=threads)
        from selfplay.judges.factory import build_judge

        self.judge = build_judge(cfg)

    def name(self) -> str:
        return self.judge.name

    def score(self, groups: list[PromptGroup]) -> Scores:
        return self.judge.score(groups)

    def stats(self) -> dict[str, Any]:
        return dict(getattr(self.judge, "stats", None) or {})


# A model judge scores a whole iteration in one call: generous, but never unbounded (a hang names the call).
START_TIMEOUT_S = 600.0
SCORE_TIMEOUT_S = 3600.0


class RemoteJudge:
    """The ``Judge`` interface over a ``JudgeActor`` handle."""

    def __init__(self, handle: Any, max_restarts: int = 0) -> None:

        self.handle = handle
        self.max_restarts = max_restarts
        self.restarts = 0  # deaths survived (the run's judge stats report them)
        self.name: str = ray_get(handle.name.remote(), "judge.name (start-up)", START_TIMEOUT_S)

    def score(self, groups: list[PromptGroup]) -> Scores:
        out: Scores = []
        for start in range(0, len(groups), CHUNK):
            out.extend(self._score_chunk(groups[start:start + CHUNK], start, len(groups)))
        return out

    def _score_chunk(self, chunk: list[PromptGroup], start: int, total: int) -> Scores:
        what = f"judge.score(prompts {start}..{start + len(chunk) - 1} of {total})"
        deadline, failed = time.monotonic() + START_TIMEOUT_S, False
        while True:
            try:
                return ray_get(self.handle.score.remote(chunk), what, SCORE_TIMEOUT_S)
            except RemoteCallError as exc:
                if not exc.actor_lost or time.monotonic() > deadline:
                    raise
                if not failed or exc.kind != "restarting":  # a (new) death of the actor: Ray restarts it
                    if self.restarts >= self.max_restarts:
                        raise
                    self.restarts += 1
                    failed = True
                    deadline = time.monotonic() + START_TIMEOUT_S
                time.sleep(1.0)  # then this chunk is sent again; chunks already scored are kept

    @property
    def stats(self) -> dict[str, Any]:
        stats = ray_get(self.handle.stats.remote(), "judge.stats", START_TIMEOUT_S)
        return {**stats, "judge_restarts": self.restarts} if self.restarts else stats

    def close(self) -> None:
        ray.kill(self.handle)


def spawn_judge(cfg: Any, num_cpus: float = 1.0, num_gpus: float = 0.0, threads: int = 1,
                max_restarts: int = 3) -> RemoteJudge:
    """Start a ``JudgeActor`` for ``cfg`` (``reward_model`` or ``pairwise``) in the current Ray cluster;
    Ray restarts it up to ``max_restarts`` times."""
    actor = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts)(JudgeActor)
    return RemoteJudge(actor.remote(cfg, threads=threads), max_restarts=max_restarts)
