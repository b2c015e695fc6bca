"""Run a list of steps on one in-process vLLM engine in a subprocess, for tests that need a fresh engine.

vLLM's CPU worker changes process-wide torch settings (threads), so engines the test process needs only
for one scenario run in a child process. A step is ``{"op": "generate", "prompts": [...], "sampling":
{Sampling fields}}``, ``{"op": "load", "blobs": [paths], "version": v}``, ``{"op": "probe", "seqs":
[[ids]]}``, ``{"op": "probe_generated"}`` (the prompts + completions of the last ``generate``) or
``{"op": "prefix_hits"}`` (vLLM's prefix-cache hit counter, in tokens); the result of each
step comes back in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from selfplay.generate.types import Completion

SCRIPT = """
import json, sys
from pathlib import Path
from selfplay.env import setup_env
setup_env(threads=1)
from selfplay.generate import Sampling, encode_prompts
from selfplay.generate.vllm_engine import VLLMEngine

args = json.loads(Path(sys.argv[1]).read_text())
engine = VLLMEngine(args["model"], dtype=args["dtype"], max_model_len=args["max_model_len"],
                    disable_log_stats=False)
results = []
for step in args["steps"]:
    if step["op"] == "generate":
        s = Sampling(**step["sampling"])
        last = (step["prompts"], engine.generate(step["prompts"], s))
        results.append([[c.to_row() for c in g] for g in last[1]])
    elif step["op"] == "probe_generated":
        ids = encode_prompts(engine.tokenizer, last[0])
        results.append(engine.probe_logps([p + list(g[0].token_ids) for p, g in zip(ids, last[1])]))
    elif step["op"] == "load":
        results.append(engine.load_buckets([Path(p).read_bytes() for p in step["blobs"]], step["version"]))
    elif step["op"] == "probe":
        results.append(engine.probe_logps(step["seqs"]))
    elif step["op"] == "prefix_hits":
        results.append(sum(m.value for m in engine._llm.get_metrics() if m.name == "vllm:prefix_cache_hits"))
print("RESULTS" + json.dumps(results))
"""


def write_blobs(blobs: list[bytes], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, blob in enumerate(blobs):
        (folder / f"bucket_{i:03d}.bin").write_bytes(blob)
        paths.append(str(folder / f"bucket_{i:03d}.bin"))
    return paths


def run_steps(model: Path, steps: list[dict[str, Any]], tmp: Path, *, dtype: str = "float32",
              max_model_len: int = 512, timeout: int = 300) -> list[Any]:
    spec = tmp / "steps.json"
    spec.write_text(json.dumps({"model": str(model), "dtype": dtype, "max_model_len": max_model_len,
                                "steps": steps}))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(spec)], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.split("RESULTS", 1)[1])


def completions(groups: list[list[dict[str, Any]]]) -> list[list[Completion]]:
    return [[Completion.from_row(r) for r in g] for g in groups]
