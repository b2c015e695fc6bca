"""The embedded Ray of a local run lets no one in and leaves nothing behind.

A real one-iteration micro run (CLI subprocess in a session of its own; vLLM generators, a DeepSpeed
learner). While it runs, every listening TCP socket of the run's processes (the driver, Ray's GCS,
raylet and agents, the actors and whatever they start) is sampled a few times a second; each must be
on a loopback address. Ray's token authentication must be on, with a token the run made for itself
(nothing written to ``~/.ray``). After a clean exit the run's Ray temp directory is gone and none of its
processes is left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import threading
import time
import uuid

import psutil
import pytest
import yaml

from tests.e2e.conftest import MICRO, run_driver

pytestmark = pytest.mark.slow  # one micro run (~40 s on 2 cores)

RECIPE = {**MICRO, "name": "loopback", "iterations": 1, "evaluation": {"num_prompts": 16}}


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


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
        self.pids: set[int] = set()
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
                    self.pids.add(proc.pid)
                    for arg in proc.cmdline():
                        self.temp_dirs.update(re.findall(r"(/tmp/sp-ray-[^/\s]+)", arg))
                    self.auth.setdefault(name, proc.environ().get("RAY_AUTH_MODE"))
                    for conn in proc.net_connections(kind="inet"):
                        if conn.status == psutil.CONN_LISTEN:
                            key = (name, conn.laddr.ip, conn.laddr.port)
                            self.listeners.setdefault(key, " ".join(proc.cmdline()[:3]))


def test_local_run_listens_on_loopback_only_and_cleans_up(tmp_path, monkeypatch):
    tag = uuid.uuid4().hex
    monkeypatch.setenv("SELFPLAY_TEST_TAG", tag)
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    token_file = os.path.expanduser("~/.ray/auth_token")  # where Ray's own default would write one
    had_token = os.path.exists(token_file)
    recipe = tmp_path / "loopback.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))

    with ListenerSampler(tag) as sampler:
        result = run_driver(recipe, tmp_path / "run")
    assert result.returncode == 0, result.stdout[-4000:]

    names = {name for name, _, _ in sampler.listeners}
    # The sampler saw the run's Ray itself, so an empty list cannot pass for a clean one.
    assert {"gcs_server", "raylet"} <= names, sorted(sampler.listeners)
    exposed = {key: cmd for key, cmd in sampler.listeners.items() if not _is_loopback(key[1])}
    assert not exposed, f"listening on non-loopback addresses: {exposed}"
    assert sampler.auth.get("gcs_server") == "token", sampler.auth
    assert had_token or not os.path.exists(token_file), "the run wrote a Ray token into the user's home"

    # Nothing left behind: the run's Ray temp dir and its processes.
    assert sampler.temp_dirs, "no Ray temp dir seen in the command lines of the run's Ray"
    created = set(sampler.temp_dirs)
    deadline = time.monotonic() + 10
    while (created or tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
        created = {path for path in created if os.path.exists(path)}
    assert not created, f"Ray temp dirs left in /tmp: {created}"
    assert not tagged_processes(tag)
