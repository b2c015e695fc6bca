"""Atomic directory replacement, shared by the run directory, the learner's export and the judges.

A directory is built under a temporary sibling name and renamed into place, so a reader sees the old
directory or the new one, never half of one; a failure while building leaves the old one untouched.

``tempfile`` creates its files 0600 and its directories 0700, whatever the umask; the swapped-in result
gets the modes an ordinary ``open``/``mkdir`` would give (:func:`umask_mode`), so teammates on shared
storage can read a run as the user's umask allows; never world-writable, though, even under umask 0,
since what a run directory holds is trusted when the run resumes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


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


def replace_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory under a temporary name next to ``final``, then swap it in."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        umask_mode(tmp, directory=True)
        build(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
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
