"""What a stage is given: :class:`StageContext` (the recipe, the run directory, the task, the log and
progress display, the sampling settings), its :class:`Iteration` (all derived from the run directory and
the recipe) and the parts it uses, each passed explicitly by the driver.

A part that may still have to start is passed as the call that gets it (:data:`GeneratorsAt`,
:data:`LearnersAt`, a judge or weight-sync getter): it starts on first use, so a skipped or resumed stage
starts nothing. A part that is either running or absent is passed as it is, or None. The runtime is the
one :class:`StageContext` of a run; tests pass a namespace with the same attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from selfplay.config import RunConfig
    from selfplay.generate.types import Sampling
    from selfplay.loop.rundir import RunDir

GeneratorsAt = Callable[[Path, int], Any]
"""The generator pool; started holding ``(policy directory, version)`` when none runs yet."""
LearnersAt = Callable[[Path], Any]
"""The learner group; started from a policy directory when none runs yet."""
ReadyLearners = Callable[[], Any]
"""The learner group if it runs or has finished starting, else None (never waits)."""


class StageContext(Protocol):
    """What every stage may read besides its parts."""

    cfg: RunConfig
    rd: RunDir

    @property
    def task(self) -> Any: ...

    def log(self, message: str) -> None: ...

    def progress(self, description: str, total: int | None = None,
                 watch_lines: Path | None = None) -> AbstractContextManager[Callable[..., None]]: ...

    def sampling(self, seed: int, eval_mode: bool = False, eval_samples: bool = False) -> Sampling: ...


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


def iteration(rt: StageContext, k: int) -> Iteration:
    return Iteration(k, rt.rd.iter_dir(k), policy_before(rt, k), rt.cfg.seed)


def initial_policy(rt: StageContext) -> Path:
    return Path(rt.rd.manifest.initial_policy or rt.rd.initial_dir / "policy")


def policy_before(rt: StageContext, k: int) -> Path:
    """The policy iteration ``k`` generates with and starts training from."""
    return rt.rd.iter_dir(k - 1) / "policy" if k > 0 else initial_policy(rt)
