"""Atomic writes, the one place that implements them: files and whole directories.

Every artifact (run-directory files, generation shards, exported policies, checkpoints' ``latest``,
weight-sync version directories, built models) is written here, so "a reader sees the old version or
the new one, never half of one" is one piece of code. Choices:

* A file (:func:`write_file`) or a directory (:func:`replace_dir`) is built under a temporary sibling
  name (``.<name>.tmp-*``, same filesystem) and renamed into place; a failure while building leaves the
  old one untouched and removes the temporary.
* Replacing an existing directory exchanges the two names in one ``renameat2(RENAME_EXCHANGE)`` call
  (Linux), so the path never stops existing; the old tree is then removed under the temporary name.
  Where the filesystem refuses the exchange (NFS, non-Linux), the old directory is renamed aside first:
  then a reader can find the path missing for the moment between two renames, never a half directory.
* ``tempfile`` creates its files 0600 and its directories 0700, whatever the umask; the swapped-in result
  gets the modes an ordinary ``open``/``mkdir`` would give (:func:`umask_mode`), so teammates on shared
  storage can read a run as the user's umask allows; never world-writable, though, even under umask 0,
  since what a run directory holds is trusted when the run resumes.
* A process may guard a directory (:func:`guarded`): every write under it calls the guard's check before it
  starts and again before its rename. The driver guards its run directory with "do I still own it?"
  (:mod:`selfplay.loop.ownership`), so a driver that lost the run never writes into it again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

TMP_INFIX = ".tmp-"  # temporaries are ``.<final name>.tmp-<random>``: a glob finds leftovers of a crash

_GUARDS: dict[str, Callable[[], None]] = {}  # directory -> check that raises when it may not be written


@contextlib.contextmanager
def guarded(root: str | Path, check: Callable[[], None]) -> Iterator[None]:
    """Within the block, writes under ``root`` (in this process) call ``check()`` first; it raises to refuse."""
    key = os.path.abspath(root)
    _GUARDS[key] = check
    try:
        yield
    finally:
        _GUARDS.pop(key, None)


def check_guard(path: str | Path) -> None:
    """Call the check of every guarded directory that holds ``path`` (nothing when none is guarded)."""
    if not _GUARDS:
        return
    where = os.path.abspath(path)
    for root, check in list(_GUARDS.items()):
        if where == root or where.startswith(root + os.sep):
            check()


def current_umask() -> int:
    """This process's umask (read from ``/proc`` where there is one: setting it to read it is racy)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(path: Path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``mkdir`` (0777) or ``open`` (0666) under the umask would have,
    less write permission for others."""
    os.chmod(path, (0o775 if directory else 0o664) & ~current_umask())


def write_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    path = Path(path)
    check_guard(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}{TMP_INFIX}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        umask_mode(tmp)  # mkstemp's 0600 would hide the artifact from the user's group
        write(tmp)
        check_guard(path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_file(path, lambda p: p.write_text(text))


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_file(path, lambda p: p.write_bytes(data))


def replace_dir(final: str | Path, build: Callable[[Path], None], *, overwrite: bool = True) -> Path:
    """Build a directory under a temporary name next to ``final``, then swap it in.

    ``overwrite=False`` refuses to replace a non-empty ``final`` (the final rename fails with OSError)."""
    final = Path(final)
    check_guard(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TMP_INFIX}", dir=final.parent))
    try:
        umask_mode(tmp, directory=True)
        build(tmp)
        check_guard(final)
        if overwrite and final.is_dir() and exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now names the old tree
        elif overwrite and final.exists():
            old = final.with_name(f".{final.name}.old{TMP_INFIX}{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV}


def exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically (Linux ``renameat2``). False where that is not available
    (nothing was changed); any other failure raises ``OSError``."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(b))
