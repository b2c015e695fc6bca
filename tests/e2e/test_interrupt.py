"""Ctrl-C, twice, as an impatient user presses it: the run stops, keeps what it finished, leaves no Ray.

A real micro run (CLI subprocess, its own session and process group, as a shell job). Once the run's
manifest records iteration 0's generate stage (the generators are up, the judge, learners and weight
sync are ahead, and 39 iterations remain), SIGINT goes to the whole process group, as a terminal sends
it, and again every 0.3 s while the driver is still shutting down, until it exits. Pressing at a moment
the test observes, not after a fixed sleep, is what makes the presses land mid-run on a fast or a
loaded machine alike; the test checks that they did (the CLI's "interrupted" message, iteration 1 not
done). Afterwards no process of the run may be left: not the driver, not Ray's daemons, not a ``ray::``
worker, not a compiler a worker started. The processes of the run are found by a tag in their
environment (every Ray process inherits the driver's), so re-parented orphans are found too.

Measured on the project's 2-core machine: this also passed before ``Runtime`` made ``ray.shutdown``
immune to Ctrl-C (Ray's reaper process cleaned up after an interrupted shutdown each time we tried:
presses at startup, during generation and after training, to the process group or the driver only).
It guards the behaviour; it did not reproduce the orphans reported elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from tests.e2e.conftest import MICRO, ROOT, selfplay_cmd
from tests.e2e.micro_run import tagged_processes

# Both reasons it was moved out of `make test` are gone: the presses now land at an observed moment, and
# no worker compiles a DeepSpeed op any more (the orphaned `c++`/`cc1plus`). It stays in the soak tier
# only for its cost on the shared 2-core machine: 46-95 s a run at load 18-43 (13 of 13 passed); three
# runs at load 14-16, with a warm start still in the recipe, took 31-46 s.
pytestmark = [pytest.mark.slow, pytest.mark.soak]  # one interrupted micro run

# Forty iterations, though the run is stopped in its first: however fast an iteration is (1-4 s), the
# run is far from its end when the presses land, so they never reach the Ctrl-C-proof final shutdown.
# No warm start: what is tested is the shutdown, and the SFT round before iteration 0 was half the cost.
RECIPE = {**MICRO, "name": "interrupt", "iterations": 40, "evaluation": {"num_prompts": 16},
          "policy": {"preset": "nano", "tokenizer": "char"}}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _stages(manifest: Path, k: int) -> dict:
    """The stages the manifest records for iteration ``k`` (written atomically, so never half-read)."""
    try:
        return json.loads(manifest.read_text()).get("iterations", {}).get(str(k), {}).get("stages", {})
    except FileNotFoundError:
        return {}


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
        manifest = tmp_path / "run" / "manifest.json"

        def generated() -> bool:
            assert proc.poll() is None, "the run ended before it was interrupted"
            return "generate" in _stages(manifest, 0)

        _wait_for(generated, 600, "iteration 0's generate stage in the manifest")
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
        # 130 from the CLI's handler, or -SIGINT when a later press lands in the interpreter's exit
        assert proc.returncode in (130, -signal.SIGINT), out[-3000:]
        assert "interrupted: finished stages are kept" in out, out[-3000:]
        assert "complete" not in json.loads(manifest.read_text())["iterations"].get("1", {}), \
            "the presses landed after iteration 1 was done"  # mid-run, as intended
        assert not left, f"left behind after a second Ctrl-C: {left}\n{out[-3000:]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in tagged_processes(tag):  # whatever a failing run left: never leak it into other tests
            with contextlib.suppress(psutil.Error):
                p.kill()
