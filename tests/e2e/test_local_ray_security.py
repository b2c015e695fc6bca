"""The embedded Ray of a local run lets no one in and leaves nothing behind.

The shared micro run (``micro_run``: a real CLI run in a session of its own, with vLLM generators and a
DeepSpeed learner, started with no Ray variables in its environment) had every listening TCP socket of
its processes (the driver, Ray's GCS, raylet and agents, the actors and whatever they start) sampled a
few times a second while it ran (``tests/e2e/micro_run.py``); each must be on a loopback address. Ray's
token authentication must be on, with a token the run made for itself (nothing written to ``~/.ray``).
After its clean exit the run's Ray temp directory must be gone and none of its processes left.
"""

from __future__ import annotations

import ipaddress

import pytest

pytestmark = pytest.mark.slow  # the shared micro run (~30 s on 2 cores) when this module runs first


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def test_loopback_addresses_are_told_apart():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.1.2.3") and not _is_loopback("::")


def test_local_run_listens_on_loopback_only_and_cleans_up(micro_run):
    names = {name for name, _, _ in micro_run.listeners}
    # The sampler saw the run's Ray itself, so an empty list cannot pass for a clean one.
    assert {"gcs_server", "raylet"} <= names, sorted(micro_run.listeners)
    exposed = {key: cmd for key, cmd in micro_run.listeners.items() if not _is_loopback(key[1])}
    assert not exposed, f"listening on non-loopback addresses: {exposed}"
    assert micro_run.auth.get("gcs_server") == "token", micro_run.auth
    assert not micro_run.wrote_token, "the run wrote a Ray token into the user's home"

    # Nothing left behind: the run's Ray temp dir and its processes.
    assert micro_run.temp_dirs, "no Ray temp dir seen in the command lines of the run's Ray"
    assert not micro_run.temp_dirs_left, f"Ray temp dirs left in /tmp: {micro_run.temp_dirs_left}"
    assert not micro_run.processes_left, micro_run.processes_left
