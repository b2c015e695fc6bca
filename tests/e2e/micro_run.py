"""The one uninterrupted micro run that several test modules read (``micro_run`` in tests/conftest.py).

A real CLI run of :data:`~tests.e2e.conftest.MICRO` (warm start, two iterations; vLLM generators, a
DeepSpeed learner) is the known-good history of ``tests/e2e/test_run.py`` and
``tests/faults/test_driver_faults.py``; while it runs, :class:`ListenerSampler` watches every listening TCP
socket of its processes for ``tests/e2e/test_local_ray_security.py``, and after its exit the run's Ray
temp directory and processes are looked for. One run instead of three: each is half a minute on 2 cores.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from tests.e2e.conftest import MICRO, run_driver

TOKEN_FILE = Path("~/.ray/auth_token").expanduser()  # where Ray's own default would write a token


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Processes whose environment carries ``SELFPLAY_TEST_TAG=tag``: the driver and everything it
    started, Ray's daemons and workers included (they inherit the driver's environment), even after
    they were re-parented."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("SELFPLAY_TEST_TAG") == tag:
                found.append(proc)
    return found


class ListenerSampler:
    """Samples the listening sockets of the tagged processes until stopped."""

    def __init__(self, tag: str):
        self.tag = tag
        self.listeners: dict[tuple[str, str, int], str] = {}  # (process name, ip, port) -> cmdline head
        self.auth: dict[str, str | None] = {}  # process name -> its RAY_AUTH_MODE
        self.temp_dirs: set[str] = set()  # Ray's temp root, as its daemons' command lines name it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ListenerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            for proc in tagged_processes(self.tag):
                with contextlib.suppress(psutil.Error):
                    name = proc.name()
                    for arg in proc.cmdline():
                        self.temp_dirs.update(re.findall(r"(/tmp/sp-ray-[^/\s]+)", arg))
                    self.auth.setdefault(name, proc.environ().get("RAY_AUTH_MODE"))
                    for conn in proc.net_connections(kind="inet"):
                        if conn.status == psutil.CONN_LISTEN:
                            key = (name, conn.laddr.ip, conn.laddr.port)
                            self.listeners.setdefault(key, " ".join(proc.cmdline()[:3]))


@dataclass
class MicroRun:
    recipe: Path
    run_dir: Path
    log: str
    returncode: int
    listeners: dict[tuple[str, str, int], str] = field(default_factory=dict)
    auth: dict[str, str | None] = field(default_factory=dict)
    temp_dirs: set[str] = field(default_factory=set)
    temp_dirs_left: set[str] = field(default_factory=set)  # 10 s after the exit
    processes_left: list[str] = field(default_factory=list)
    wrote_token: bool = False


def observed_micro_run(root: Path) -> MicroRun:
    """Run MICRO into ``root/run`` as a newcomer's shell would (no Ray variables set), watching it."""
    recipe = root / "micro.yaml"
    recipe.write_text(yaml.safe_dump(copy.deepcopy(MICRO), sort_keys=False))
    tag = uuid.uuid4().hex
    had_token = TOKEN_FILE.exists()
    env: dict[str, str | None] = {"SELFPLAY_TEST_TAG": tag}
    env.update(dict.fromkeys(("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")))
    with ListenerSampler(tag) as sampler:
        result = run_driver(recipe, root / "run", env=env)
    left = set(sampler.temp_dirs)
    deadline = time.monotonic() + 10
    while (left or tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
        left = {path for path in left if os.path.exists(path)}
    procs = []
    for proc in tagged_processes(tag):
        with contextlib.suppress(psutil.Error):
            procs.append(f"{proc.pid} {proc.name()}")
    return MicroRun(recipe, root / "run", result.stdout, result.returncode, sampler.listeners, sampler.auth,
                    sampler.temp_dirs, left, procs, wrote_token=not had_token and TOKEN_FILE.exists())
