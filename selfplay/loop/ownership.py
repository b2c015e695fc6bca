"""One driver per run directory: an owner record taken before anything else, a heartbeat, safe take-over.

Two drivers on one run directory (a resubmitted ``ray job submit``, a second terminal, a scheduler's retry)
would both write the manifest, delete each other's temporaries and train the same iteration twice. So a
driver owns the run directory before it reads or writes anything in it, and holds it until it exits:

* **The record.** ``RUN_DIR/owner/record.json`` says who holds the run: host, pid, the process's start
  time (so a reused pid is not mistaken for the owner), the boot id and pid namespace (so "same host"
  means "can see that pid"), when it started, the Ray job id under ``ray job submit``, and a random token.
  The record's mtime is the heartbeat: the owner touches it from a daemon thread every
  ``stale_after / 12`` seconds.
* **Taking it is one rename.** A driver builds its record in a directory of its own
  (``.owner.new-<token>/``) and renames that onto ``owner``. ``rename(2)`` onto a non-empty directory
  fails, so exactly one of several drivers gets in, and the record is complete the moment it appears.
  Directory renames are atomic on local filesystems, NFSv3/v4 and Lustre, where ``flock`` may be absent
  (NFS mounted with ``nolock``), emulated per client, or dropped silently when a node is cut off; a lock
  a driver cannot see being lost is the one failure this must not have. ``O_CREAT|O_EXCL`` files (HF
  ``filelock``'s ``SoftFileLock``) and ``link(2)`` (``flufl.lock``) are atomic too, but a file's content is
  written after it is created (a reader can see it empty), and replacing a stale one needs a second,
  conditional step that a plain file rename does not give (it replaces whatever is there).
* **A take-over is a second rename,** of ``owner`` onto ``.owner.taken-<its token>``: the target names
  the owner judged stale, and once it exists (non-empty) no other rename onto it can succeed, so of two
  drivers taking over the same stale owner only one wins; the other looks again and finds the winner
  live. The winner then installs its own record as above. A driver that finds it moved a record other
  than the one it judged (the owner changed in between) puts it back.
* **Stale.** On the same host (same hostname, boot id and pid namespace) an owner whose pid is gone, or
  now belongs to a process started at another time, is stale at once and taken over without asking. Any
  owner whose heartbeat is older than the bound (``SELFPLAY_OWNER_STALE_S``, default 120 s: well past an
  NFS client's attribute cache, which can hide a fresh heartbeat for up to a minute) is stale, and is
  taken only with ``--take-over``: a silent node may still be running, and only the user can know it is
  not. A live owner is never taken. Heartbeat ages compare the file server's clock with this host's.
* **Losing it.** Before each artifact write under the run directory (:func:`selfplay.atomic.check_guard`,
  before the write starts and again before its rename) the driver re-reads the record and stops with
  :class:`OwnershipLostError` if its token is gone. The heartbeat thread notices a loss on its own too and
  interrupts the driver's main thread, so its actors are shut down before they write again.
* **Release** renames the record away (checking it is still ours) and removes it: the next driver,
  on any host, starts at once. A driver killed with SIGKILL leaves its record; see "Stale".

Read-only commands (``status``, ``report``, ``compare``) never take ownership; ``status`` shows the owner
with :func:`describe`.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfplay.atomic import guarded
from selfplay.loop.rundir import RunDirError

OWNER = "owner"  # RUN_DIR/owner/record.json
RECORD = "record.json"
STALE_ENV = "SELFPLAY_OWNER_STALE_S"
DEFAULT_STALE_S = 120.0
_TAKEN, _RELEASED, _NEW = ".owner.taken-", ".owner.released-", ".owner.new-"
_TAKEN_BY_OTHERS = (errno.ENOTEMPTY, errno.EEXIST)


class OwnershipError(RunDirError):
    """The run directory is owned by another driver (refused), or this driver lost it."""


class OwnershipLostError(OwnershipError):
    """Another driver took the run over while this one ran; this one stops before its next write."""


def stale_after() -> float:
    """Seconds without a heartbeat after which an owner is stale (``SELFPLAY_OWNER_STALE_S``)."""
    value = os.environ.get(STALE_ENV, "")
    try:
        return float(value) if value else DEFAULT_STALE_S
    except ValueError:
        raise RunDirError(f"{STALE_ENV}={value!r} is not a number of seconds") from None


# --- who this process is
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if unknown."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name (field 2) may hold spaces and ')'
    return fields[19] if len(fields) > 19 and fields[0] not in ("Z", "X") else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _ray_job() -> str | None:
    """The submission id when this driver runs under ``ray job submit`` (Ray passes it in the job config)."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", ""))
        return config.get("metadata", {}).get("job_submission_id")
    return None


@dataclass(frozen=True)
class OwnerRecord:
    """What ``owner/record.json`` holds (written once by the owner; its mtime is the heartbeat)."""

    token: str
    host: str
    pid: int
    started: str  # local time with zone, for people
    pid_start: str | None = None  # /proc/<pid>/stat start time: guards against a reused pid
    boot_id: str | None = None
    pid_namespace: str | None = None
    job: str | None = None  # Ray job submission id
    command: str = ""

    @classmethod
    def of_this_process(cls) -> OwnerRecord:
        return cls(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                   started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), pid_start=_pid_start(os.getpid()),
                   boot_id=_read("/proc/sys/kernel/random/boot_id"), pid_namespace=_pid_namespace(),
                   job=_ray_job(), command=" ".join(sys.argv)[:300])

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OwnerRecord:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def same_machine(self) -> bool:
        """True when this process can see the owner's pid: same host, same boot, same pid namespace."""
        return (self.host == socket.gethostname() and self.boot_id == _read("/proc/sys/kernel/random/boot_id")
                and self.pid_namespace == _pid_namespace())

    def who(self) -> str:
        job = f" (ray job {self.job})" if self.job else ""
        return f"pid {self.pid} on host {self.host}{job}"


@dataclass(frozen=True)
class Owner:
    """The current owner as another process sees it: its record, heartbeat age and whether it is stale."""

    record: OwnerRecord
    heartbeat_age: float  # seconds since the record's mtime
    state: str  # "live", "gone" (same host, pid not running: taken over at once), "stale" (needs --take-over)
    reason: str
    stale_after: float = field(default=DEFAULT_STALE_S)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.record), "heartbeat_age_s": round(self.heartbeat_age, 1), "state": self.state,
                "reason": self.reason}


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe(owner: Owner) -> str:
    """One line for people: who holds the run, since when, its heartbeat age and state."""
    return (f"{owner.record.who()}, started {owner.record.started}, heartbeat {_age(owner.heartbeat_age)} ago"
            f" ({owner.state}: {owner.reason})")


def _gone(record: OwnerRecord) -> str | None:
    """Why the owner's process is certainly not running (None: it may be). Same machine only."""
    if not os.path.isdir("/proc/self"):  # no /proc: existence only, a reused pid cannot be told apart
        try:
            os.kill(record.pid, 0)
        except ProcessLookupError:
            return f"pid {record.pid} is not running on this host"
        except OSError:
            pass
        return None
    now = _pid_start(record.pid)
    if now is None:
        return f"pid {record.pid} is not running on this host"
    if record.pid_start is not None and now != record.pid_start:
        return f"pid {record.pid} now belongs to another process"
    return None


def _judge(record: OwnerRecord, age: float, bound: float) -> tuple[str, str]:
    if record.same_machine():
        gone = _gone(record)
        if gone is not None:
            return "gone", gone
    if age > bound:
        return "stale", f"no heartbeat for more than {bound:g}s"
    return "live", "this host, pid running" if record.same_machine() else f"heartbeat within {bound:g}s"


def _load(owner_dir: Path) -> tuple[OwnerRecord, float] | None:
    """The record in ``owner_dir`` and its mtime; None if there is none. A record that cannot be parsed
    (written by no selfplay) is reported with the directory's mtime, so it can still go stale."""
    path = owner_dir / RECORD
    try:
        text, mtime = path.read_text(encoding="utf-8"), path.stat().st_mtime
    except FileNotFoundError:
        try:
            return OwnerRecord(token="?", host="?", pid=-1, started="?"), owner_dir.stat().st_mtime
        except FileNotFoundError:
            return None
    try:
        return OwnerRecord.from_json(json.loads(text)), mtime
    except (ValueError, TypeError):
        return OwnerRecord(token="?", host="?", pid=-1, started="?"), mtime


def read_owner(run_dir: str | Path) -> Owner | None:
    """Who owns ``run_dir`` now (None: nobody). Reads only: never takes, never waits."""
    found = _load(Path(run_dir) / OWNER)
    if found is None:
        return None
    record, mtime = found
    bound = stale_after()
    age = max(0.0, time.time() - mtime)
    state, reason = _judge(record, age, bound)
    return Owner(record, age, state, reason, bound)


# --- taking, holding and giving back
def _stage(root: Path, record: OwnerRecord) -> Path:
    """The record, complete, in a directory of this driver's own (renamed onto ``owner`` to take the run)."""
    staged = root / f"{_NEW}{record.token}"
    staged.mkdir()
    (staged / RECORD).write_text(json.dumps(asdict(record), indent=1) + "\n", encoding="utf-8")
    return staged


def _install(staged: Path, owner_dir: Path, token: str) -> bool:
    """Rename ``staged`` onto ``owner``: True if this driver now owns the run, False if another does."""
    try:
        os.rename(staged, owner_dir)
        return True
    except FileNotFoundError:  # an NFS rename retried after its reply was lost: did the first one land?
        found = _load(owner_dir)
        return found is not None and found[0].token == token
    except OSError as exc:
        if exc.errno in _TAKEN_BY_OTHERS:
            return False
        raise


def _retire(root: Path, token: str) -> bool:
    """Move the owner whose token is ``token`` aside, as the one driver allowed to: the target's name is
    that token, so a second rename onto it fails. False if it was already moved (or released)."""
    tomb = root / f"{_TAKEN}{token}"
    try:
        os.rename(root / OWNER, tomb)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in _TAKEN_BY_OTHERS:
            return False
        raise
    found = _load(tomb)
    if found is not None and found[0].token == token:
        return True
    with contextlib.suppress(OSError):  # the owner changed since it was judged: give the new one back
        os.rename(tomb, root / OWNER)
    shutil.rmtree(tomb, ignore_errors=True)
    return False


def _sweep(root: Path, bound: float) -> None:
    """Remove what earlier take-overs, releases and failed claims left, once older than the bound (a
    young ``.owner.taken-*`` still stops a slow second taker of the same owner)."""
    for path in root.glob(".owner.*"):
        with contextlib.suppress(OSError):
            if path.name.startswith((_TAKEN, _RELEASED, _NEW)) and time.time() - path.stat().st_ctime > bound:
                shutil.rmtree(path, ignore_errors=True)


def _refusal(root: Path, owner: Owner, take_over: bool) -> OwnershipError:
    rec = owner.record
    stop = f"`ray job stop {rec.job}`" if rec.job else f"`kill {rec.pid}` on {rec.host}"
    head = f"run directory {root} is in use by another driver: {describe(owner)}. "
    if owner.state == "stale":
        return OwnershipError(
            head + f"If that driver is dead (its node lost, its job gone), rerun with --take-over to take the run "
            f"over; if it still runs, stop it first ({stop})")
    refused = "--take-over refuses a live owner. " if take_over else ""
    return OwnershipError(
        head + refused + f"Wait for it to finish, or stop it ({stop}) and rerun; an owner that stops "
        f"heartbeating is stale after {owner.stale_after:g}s and can then be taken over with --take-over")


def _claim(root: Path, mine: OwnerRecord, take_over: bool) -> dict[str, Any] | None:
    """Take ``root`` for ``mine``; returns the take-over to log (None: nobody held it). Raises when refused."""
    staged = _stage(root, mine)
    took_over: dict[str, Any] | None = None
    try:
        for _ in range(8):  # each pass lost a race to a driver that changed the owner; it is then looked at
            if _install(staged, root / OWNER, mine.token):
                return took_over
            owner = read_owner(root)
            if owner is None:
                continue  # released meanwhile
            if owner.state == "live" or (owner.state == "stale" and not take_over):
                raise _refusal(root, owner, take_over)
            if _retire(root, owner.record.token):
                took_over = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "previous": owner.to_json(),
                             "reason": owner.reason, "take_over_flag": take_over,
                             "by": {"host": mine.host, "pid": mine.pid, "job": mine.job}}
        raise OwnershipError(f"run directory {root}: its owner changed 8 times while this driver tried to take "
                             "it; another driver is starting on it, see `selfplay status`")
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone when installed; left when refused


class Ownership:
    """This driver's hold on a run directory: a heartbeat thread, the check before each write, release."""

    def __init__(self, root: Path, record: OwnerRecord, took_over: dict[str, Any] | None, bound: float,
                 interrupt: bool = True):
        self.root = root
        self.record = record
        self.took_over = took_over  # the take-over to log in the manifest (None: nobody held the run)
        self.bound = bound
        self.lost: str | None = None  # why this driver no longer owns the run
        self.created: Path | None = None  # the outermost directory that taking the run created
        self._interrupt = interrupt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="selfplay-owner-heartbeat", daemon=True)
        self._thread.start()

    @property
    def record_path(self) -> Path:
        return self.root / OWNER / RECORD

    def _holder(self) -> OwnerRecord | None:
        found = _load(self.root / OWNER)
        return found[0] if found is not None else None

    def _lose(self, holder: OwnerRecord | None) -> str:
        by = f"{holder.who()} holds it now" if holder is not None else "its owner record was removed"
        self.lost = (f"this driver lost ownership of run directory {self.root}: {by} (a take-over after this "
                     f"driver's heartbeat stalled for more than {self.bound:g}s); it stopped before its next "
                     "write. The other driver carries on; see `selfplay status`")
        return self.lost

    def check(self) -> None:
        """Raise :class:`OwnershipLostError` unless the owner record is still this driver's (one small read)."""
        if self.lost is None:
            holder = self._holder()
            if holder is not None and holder.token == self.record.token:
                return
            self._lose(holder)
        raise OwnershipLostError(self.lost)

    def _beat(self) -> None:
        while not self._stop.wait(max(0.05, self.bound / 12)):
            try:
                holder = self._holder()
                if holder is None or holder.token != self.record.token:
                    self._lose(holder)
                    if self._interrupt:  # the main thread stops and shuts its actors down before they write again
                        _thread.interrupt_main()
                    return
                os.utime(self.record_path)  # no times given: the file server's clock, as every reader sees
            except OSError:
                continue  # a storage hiccup: the next beat tries again; a long one lets the record go stale

    def release(self) -> None:
        """Stop the heartbeat and give the run up, if it is still this driver's."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self.lost is not None:
            return
        aside = self.root / f"{_RELEASED}{self.record.token}"
        with contextlib.suppress(OSError):
            os.rename(self.root / OWNER, aside)
            found = _load(aside)
            if found is not None and found[0].token != self.record.token:  # taken over just now: not ours
                os.rename(aside, self.root / OWNER)
        shutil.rmtree(aside, ignore_errors=True)


    def remove_if_empty(self) -> None:
        """Remove the directories taking the run created, if nothing was written into them (a run refused
        by its recipe check leaves no empty run directory behind)."""
        if self.created is None:
            return
        for path in (self.root, *self.root.parents):
            try:
                path.rmdir()
            except OSError:
                return
            if path == self.created:
                return


def acquire(run_dir: str | Path, *, take_over: bool = False, interrupt: bool = True) -> Ownership:
    """Own ``run_dir`` (created if missing) or raise :class:`OwnershipError` naming the holder.

    A same-host owner whose process is gone is taken over at once; a stale one only with ``take_over``."""
    root = Path(run_dir).resolve()
    if root.exists() and not root.is_dir():
        raise RunDirError(f"run directory {root} is a file, not a directory; choose another --run-dir")
    bound = stale_after()
    mine = OwnerRecord.of_this_process()
    created = None  # the outermost directory this call creates: removed again if the run never starts
    for parent in (root, *root.parents):
        if parent.exists():
            break
        created = parent
    try:
        # Never world-writable, whatever the umask: what is in it is trusted on resume (see docs/security.md).
        root.mkdir(mode=0o775, parents=True, exist_ok=True)
        took_over = _claim(root, mine, take_over)
    except OSError as exc:
        raise RunDirError(f"run directory {root} is not writable ({exc.strerror or exc}); fix its permissions "
                          "or choose another --run-dir") from None
    _sweep(root, bound)
    own = Ownership(root, mine, took_over, bound, interrupt)
    own.created = created
    return own


@contextlib.contextmanager
def hold(run_dir: str | Path, *, take_over: bool = False, interrupt: bool = True) -> Iterator[Ownership]:
    """Own ``run_dir`` for the block: every atomic write under it first checks ownership; released at the
    end. An interrupt sent by the heartbeat on losing the run surfaces as :class:`OwnershipLostError`."""
    own = acquire(run_dir, take_over=take_over, interrupt=interrupt)
    finished = False
    try:
        with guarded(own.root, own.check):
            yield own
        finished = True
    except KeyboardInterrupt:
        if own.lost is not None:
            raise OwnershipLostError(own.lost) from None
        raise
    finally:
        try:
            own.release()
        except KeyboardInterrupt:  # the heartbeat's interrupt, arriving as the block ended: its error stands
            if own.lost is None:
                raise
        if not finished:
            own.remove_if_empty()


def owner_line(run_dir: str | Path) -> str:
    """``selfplay status``'s line on who holds the run now, and what a new ``selfplay run`` would do."""
    owner = read_owner(run_dir)
    if owner is None:
        return "owner: none (no driver holds this run)"
    then = {"gone": "; the next `selfplay run` takes it over",
            "stale": "; `selfplay run --take-over` takes it over if that driver is dead"}.get(owner.state, "")
    return f"owner: {describe(owner)}{then}"
