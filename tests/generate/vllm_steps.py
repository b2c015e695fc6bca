"""Run lists of steps on in-process vLLM engines in one child process, for tests that need a fresh engine.

vLLM's CPU worker changes process-wide torch settings (threads), so engines the test process needs only
for one scenario run in a child process. The child (``VLLMChild``) is started once per test tier and
serves every scenario of it, one engine at a time: the Python and vLLM imports are paid once, each
scenario still starts its own engine on its own model, dtype and length. A step is ``{"op": "generate",
"prompts": [...], "sampling": {Sampling fields}}``, ``{"op": "load", "blobs": [paths], "version": v}``,
``{"op": "probe", "seqs": [[ids]]}``, ``{"op": "probe_generated"}`` (the prompts + completions of the
last ``generate``) or ``{"op": "prefix_hits"}`` (vLLM's prefix-cache hit counter, in tokens); the result
of each step comes back in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from selfplay.generate.types import Completion

SCRIPT = """
import gc, json, os, sys, traceback
from pathlib import Path
from selfplay.env import setup_env
setup_env(threads=1)
from selfplay.generate import Sampling, encode_prompts
from selfplay.generate.vllm_engine import VLLMEngine


def run(args):
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
    del engine
    gc.collect()
    return results


for line in sys.stdin:  # one spec file per line; the answer goes to the spec's "out" file
    args = json.loads(Path(line.strip()).read_text())
    try:
        answer = {"results": run(args)}
    except Exception:
        answer = {"error": traceback.format_exc()}
    Path(args["out"] + ".part").write_text(json.dumps(answer))
    os.replace(args["out"] + ".part", args["out"])
"""


class VLLMChild:
    """One child process that runs scenarios (``run_steps``) one after another, each on a new engine."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "child.log"
        self._calls = 0
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=subprocess.PIPE, stdout=log,
                                         stderr=subprocess.STDOUT, text=True)

    def run_steps(self, model: Path, steps: list[dict[str, Any]], tmp: Path, *, dtype: str = "float32",
                  max_model_len: int = 512, timeout: int = 300) -> list[Any]:
        self._calls += 1
        out = self.workdir / f"answer_{self._calls:03d}.json"
        spec = Path(tmp) / f"steps_{self._calls:03d}.json"
        spec.write_text(json.dumps({"model": str(model), "dtype": dtype, "max_model_len": max_model_len,
                                    "steps": steps, "out": str(out)}))
        assert self.proc.poll() is None, f"the vLLM child exited ({self.proc.returncode}): {self._tail()}"
        self.proc.stdin.write(f"{spec}\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while not out.exists():
            assert self.proc.poll() is None, f"the vLLM child exited ({self.proc.returncode}): {self._tail()}"
            assert time.monotonic() < deadline, f"the vLLM child did not answer within {timeout}s: {self._tail()}"
            time.sleep(0.1)
        answer = json.loads(out.read_text())
        assert "error" not in answer, answer.get("error", "")[-4000:]
        return answer["results"]

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def close(self) -> None:
        """Ends the child at once: it holds no engine between scenarios, so nothing needs its own clean-up."""
        self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def write_blobs(blobs: list[bytes], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, blob in enumerate(blobs):
        (folder / f"bucket_{i:03d}.bin").write_bytes(blob)
        paths.append(str(folder / f"bucket_{i:03d}.bin"))
    return paths


def completions(groups: list[list[dict[str, Any]]]) -> list[list[Completion]]:
    return [[Completion.from_row(r) for r in g] for g in groups]
