"""Ctrl-C, twice, as an impatient user presses it: the run stops, keeps what it finished, leaves no Ray.

A real micro run (CLI subprocess, its own session and process group, as a shell job). Once its
generator actors are up, SIGINT goes to the whole process group, as a terminal sends it, and again
every 0.3 s while the driver is still shutting down, until it exits. Afterwards no process of the run may be left:
not the driver, not Ray's daemons, not a ``ray::`` worker. The processes of the run are found by a tag
in their environment (every Ray process inherits the driver's), so re-parented orphans are found too.

Measured on the project's 2-core machine: this also passed before ``Runtime`` made ``ray.shutdown``
immune to Ctrl-C (Ray's reaper process cleaned up after an interrupted shutdown each time we tried:
presses at startup, during generation and after training, to the process group or the driver only).
It guards the behaviour; it did not reproduce the orphans reported elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid

import psutil
import pytest
import yaml

from tests.e2e.conftest import MICRO, ROOT, selfplay_cmd
from tests.e2e.test_local_ray_security import tagged_processes

# In `make test-soak` / `make test-all`, not `make test`: it fails about one run in three, two ways, both
# open in issue #14. (1) The run can finish its work before the presses land (they then hit the
# Ctrl-C-proof final shutdown: exit 0). (2) Presses during start-up left a C++ compiler (`c++`,
# `cc1plus`, started by a worker) running 15 s after the run exited: a real orphan, not yet fixed.
pytestmark = [pytest.mark.slow, pytest.mark.soak]  # one interrupted micro run (~30 s on 2 cores)

# Forty iterations, though the run is stopped early: a micro iteration takes 1-4 s, and with one (then
# four) iterations the run finished its work before the presses (once at load 20, once in a clean-clone
# suite), which then landed in the Ctrl-C-proof final shutdown: exit 0, nothing tested. The presses stop
# the run, so the extra iterations cost nothing.
RECIPE = {**MICRO, "name": "interrupt", "iterations": 40, "evaluation": {"num_prompts": 16}}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_second_ctrl_c_leaves_no_ray_processes(tmp_path):
    tag = uuid.uuid4().hex
    recipe = tmp_path / "interrupt.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    env = {**os.environ, "SELFPLAY_TEST_TAG": tag}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(selfplay_cmd("run", str(recipe), "--run-dir", str(tmp_path / "run")), cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    left: list[str] = []
    try:
        def workers_up() -> bool:
            assert proc.poll() is None, "the run ended before it was interrupted"
            return any(p.name().startswith("ray::") for p in tagged_processes(tag))

        _wait_for(workers_up, 600, "the run's Ray workers")
        time.sleep(2)
        # Ctrl-C, then again and again while the driver unwinds (stopping actors, then Ray), until it exits.
        presses = 0
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
                presses += 1
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=60)
        assert presses >= 2, f"the run exited after {presses} Ctrl-C: the second one was never tested"
        # Ray's shutdown kills its processes asynchronously; give them a moment to go.
        deadline = time.monotonic() + 15
        while tagged_processes(tag) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [f"{p.pid} {p.name()}" for p in tagged_processes(tag)]
        assert proc.returncode != 0, out[-3000:]
        assert not left, f"left behind after a second Ctrl-C: {left}\n{out[-3000:]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in tagged_processes(tag):  # whatever a failing run left: never leak it into other tests
            with contextlib.suppress(psutil.Error):
                p.kill()
