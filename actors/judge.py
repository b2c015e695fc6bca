"""A model judge (reward model or pairwise ranker) in a Ray actor: a thin host for library code.

``JudgeActor`` owns one resource, the judge model, and calls ``selfplay.judges.build_judge`` to make
it; the class is plain Python, so ``JudgeActor(cfg).score(groups)`` runs in-process exactly as the actor
does (tests compare the two). ``spawn_judge`` starts it under Ray with explicit CPUs and torch threads
and returns a ``RemoteJudge``, which has the ``Judge`` interface, so the driver cannot tell them apart.
"""

from __future__ import annotations

from typing import Any

from selfplay.judges.base import PromptGroup, Scores
from selfplay.sync.base import ray_get


class JudgeActor:
    """Hosts one in-process model judge; ``threads`` pins torch/OpenMP threads in this process."""

    def __init__(self, cfg: Any, threads: int = 1) -> None:
        from selfplay.env import setup_env

        setup_env(threads=threads)
        from selfplay.judges.factory import build_judge

        self.judge = build_judge(cfg, remote=False)

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

    def __init__(self, handle: Any) -> None:

        self.handle = handle
        self.name: str = ray_get(handle.name.remote(), "judge.name (start-up)", START_TIMEOUT_S)

    def score(self, groups: list[PromptGroup]) -> Scores:

        return ray_get(self.handle.score.remote(groups), f"judge.score({len(groups)} prompts)", SCORE_TIMEOUT_S)

    @property
    def stats(self) -> dict[str, Any]:

        return ray_get(self.handle.stats.remote(), "judge.stats", START_TIMEOUT_S)

    def close(self) -> None:
        import ray

        ray.kill(self.handle)


def spawn_judge(cfg: Any, num_cpus: float = 1.0, num_gpus: float = 0.0, threads: int = 1) -> RemoteJudge:
    """Start a ``JudgeActor`` for ``cfg`` (``reward_model`` or ``pairwise``) in the current Ray cluster."""
    import ray

    actor = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(JudgeActor)
    return RemoteJudge(actor.remote(cfg, threads=threads))
