"""What a stage knows about its iteration (:class:`Iteration`), all derived from the run directory and
the recipe, and the policies an iteration starts from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Iteration:
    """What a stage knows about its iteration, all derived from the run directory and the recipe."""

    k: int
    dir: Path  # the iteration directory
    policy_in: Path  # the policy it generates with and starts training from
    seed: int  # the run's seed

    @property
    def policy_out(self) -> Path:
        return self.dir / "policy"

    @property
    def version(self) -> int:
        """The policy version this iteration produces (the generators hold ``k`` while it generates)."""
        return self.k + 1

    @property
    def sample_seed(self) -> int:
        return self.seed * 100_003 + self.k

    @property
    def pair_seed(self) -> int:
        return self.seed + self.k


def iteration(rt, k: int) -> Iteration:
    return Iteration(k, rt.rd.iter_dir(k), policy_before(rt, k), rt.cfg.seed)


def initial_policy(rt) -> Path:
    return Path(rt.rd.manifest.initial_policy or rt.rd.initial_dir / "policy")


def policy_before(rt, k: int) -> Path:
    """The policy iteration ``k`` generates with and starts training from."""
    return rt.rd.iter_dir(k - 1) / "policy" if k > 0 else initial_policy(rt)
