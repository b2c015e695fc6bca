"""The library imports without the heavy engines: `import selfplay` (and its packages) pulls no Ray, vLLM
or DeepSpeed; those are imported only by `actors/` and inside the functions that start them."""

import subprocess
import sys

HEAVY = ("ray", "vllm", "deepspeed")


def test_import_selfplay_pulls_no_engines():
    modules = [
        "selfplay",
        "selfplay.config",
        "selfplay.losses",
        "selfplay.models",
        "selfplay.tasks",
        "selfplay.train",
        "selfplay.generate",
        "selfplay.sync",
        "selfplay.judges",
        "selfplay.pairs",
        "selfplay.loop",
        "selfplay.loop.driver",
        "selfplay.cli",
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(','.join(sorted(h for h in {HEAVY!r} if h in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing the library loaded: {out.stdout.strip()}"
