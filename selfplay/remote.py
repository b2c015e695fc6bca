"""Remote calls: the one place that decides how a call to a Ray actor waits, fails and is described.

Generators, judges and learner groups all call actors; they all go through this module,
so "a hung call becomes an error naming the actor and the method" and "a remote failure is summed up
in one line" are written once. Ray is imported inside the functions: importing this module pulls no
engine, so library code that only *may* talk to actors stays importable without Ray.

* :func:`ray_get` waits for one call with a timeout and raises :class:`RemoteCallError`, whose ``kind``
  says what happened: ``timeout``, ``died`` (the actor's process is gone), ``restarting`` (Ray is bringing
  the actor back) or ``raised`` (the remote code raised; the message carries its type and first line).
* :func:`describe` is the one-line summary of a remote failure used in every message.
* :func:`call_all` calls a method on many actors concurrently; ``retry_dead=True`` sends a call again
  when its actor died and Ray restarted it, for calls that are safe to repeat (a weight load replaces
  every weight).
* :func:`first_ready` is the wait of a loop that hands work to several actors at once (deadlines are
  the caller's: the generator pool's shards, the learner group's ranks).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

RETRIES = 3  # deaths a retried call survives (``call_all(retry_dead=True)``)


class RemoteCallError(RuntimeError):
    """A remote call that failed or did not answer in time; the message names actor and method.

    ``kind``: ``timeout``, ``died``, ``restarting`` or ``raised`` (see the module docstring)."""

    def __init__(self, message: str, kind: str = "raised") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def actor_lost(self) -> bool:
        """The actor's process is gone or being restarted (not an error of the called code)."""
        return self.kind in ("died", "restarting")


def describe(exc: BaseException) -> str:
    """One line for a remote failure: the remote code's exception (type and first line), or the line of
    an actor's death notice that names the exception (e.g. a failed ``__init__``), never Ray's whole
    remote traceback."""
    ray = _ray()
    if isinstance(exc, ray.exceptions.RayActorError):
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
        return (errors[-1] if errors else lines[0] if lines else type(exc).__name__)[:500]
    cause = getattr(exc, "cause", None)
    cause = cause if isinstance(cause, BaseException) else exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:800]


def ray_get(ref: Any, what: str, timeout: float) -> Any:
    """``ray.get`` with a timeout; failures re-raised as :class:`RemoteCallError` naming ``what``."""
    ray = _ray()
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise RemoteCallError(f"{what} did not answer within {timeout:.0f} s", "timeout") from None
    except ray.exceptions.RayActorError as exc:
        kind = "restarting" if isinstance(exc, ray.exceptions.ActorUnavailableError) else "died"
        raise RemoteCallError(f"{what} failed: its actor died: {describe(exc)}", kind) from exc
    except ray.exceptions.RayTaskError as exc:
        raise RemoteCallError(f"{what} failed: {describe(exc)}") from exc


def first_ready(refs: Sequence[Any], timeout: float) -> Any | None:
    """The first of ``refs`` to finish within ``timeout`` seconds, else None (nothing is fetched)."""
    ray = _ray()
    ready, _ = ray.wait(list(refs), num_returns=1, timeout=max(0.0, timeout))
    return ready[0] if ready else None


def all_ready(refs: Sequence[Any], timeout: float) -> bool:
    """Whether every one of ``refs`` finishes within ``timeout`` seconds (nothing is fetched)."""
    ray = _ray()
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=max(0.0, timeout))
    return len(ready) == len(refs)


def call_all(named: Sequence[tuple[str, Any]], method: str, args: tuple, timeout: float,
             retry_dead: bool = False) -> list[Any]:
    """Call ``method(*args)`` on every named actor concurrently; results in order.

    Raises :class:`RemoteCallError` naming the first failing actor. With ``retry_dead``, a call whose
    actor died is sent again (Ray delivers it once a restarted actor is back) until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    refs = [getattr(actor, method).remote(*args) for _, actor in named]
    return [_get(ref, actor, name, method, args, deadline, RETRIES if retry_dead else 0)
            for ref, (name, actor) in zip(refs, named)]


def _get(ref: Any, target: Any, name: str, method: str, args: tuple, deadline: float, retries: int) -> Any:
    deaths = 0
    while True:
        try:
            return ray_get(ref, f"{name}.{method}", max(1.0, deadline - time.monotonic()))
        except RemoteCallError as exc:
            if not exc.actor_lost or retries == 0 or time.monotonic() + 1.0 >= deadline:
                raise
            if exc.kind == "died":  # a death, not "still restarting"
                deaths += 1
                if deaths > retries:
                    raise
            time.sleep(1.0)  # Ray is restarting it: ask again
            ref = getattr(target, method).remote(*args)


def _ray() -> Any:
    """The ``ray`` module, imported on first use (so that importing this module pulls no engine)."""
    import ray

    return ray
