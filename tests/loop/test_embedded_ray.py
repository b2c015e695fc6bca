"""The embedded Ray's lifecycle in a run's Runtime: what it sets while it runs, and what it leaves.

A fresh Python process (so no other Ray is running in it) opens a Runtime on a micro recipe, starts the
embedded Ray and reports what it sees: Ray's temp dir, the node address, the auth mode of the driver's
environment and a remote task's. After the Runtime exits, the temp dir must be gone and the process
environment must be as it was (a later connection to a real cluster must see the user's settings).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.e2e.conftest import MICRO, ROOT

pytestmark = pytest.mark.slow  # a fresh process with a real local Ray (~10-30 s on 2 busy cores)

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import ray
    from selfplay.config import load_config
    from selfplay.loop.runtime import Runtime, open_run_dir

    cfg = load_config(sys.argv[1], [])
    seen = {}
    with Runtime(cfg, open_run_dir(cfg, sys.argv[2])) as rt:
        rt.ensure_ray()
        seen["temp_dir"] = ray._private.worker._global_node.get_temp_dir_path()
        seen["node_ip"] = ray.util.get_node_ip_address()
        seen["driver_auth"] = os.environ.get("RAY_AUTH_MODE")
        seen["task_auth"] = ray.get(ray.remote(lambda: os.environ.get("RAY_AUTH_MODE")).remote())
    seen["after_auth"] = os.environ.get("RAY_AUTH_MODE")
    seen["after_token"] = os.environ.get("RAY_AUTH_TOKEN")
    seen["temp_dir_exists"] = os.path.exists(seen["temp_dir"])
    print("SEEN " + json.dumps(seen))
""")


def test_embedded_ray_is_loopback_with_a_token_and_leaves_nothing(tmp_path):
    recipe = tmp_path / "micro.yaml"
    recipe.write_text(yaml.safe_dump(MICRO, sort_keys=False))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(recipe), str(tmp_path / "run")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.split("SEEN ", 1)[1])
    assert seen["node_ip"] == "127.0.0.1"
    assert seen["driver_auth"] == "token" and seen["task_auth"] == "token"
    assert seen["temp_dir"].startswith("/tmp/sp-ray-")
    assert seen["temp_dir_exists"] is False, seen
    assert seen["after_auth"] is None and seen["after_token"] is None, seen
