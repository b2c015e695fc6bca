"""The ``math`` grader: HF math-verify (``parse`` / ``verify``) in a child process with a per-answer timeout.

math-verify bounds its own work with ``signal.alarm``, which only works on the main thread of the main
interpreter. Off it (a judge thread, a threaded Ray actor) the call fails and, with errors not raised,
every answer silently scores 0 (verl#5635, trl#5281). So math-verify is called here with its own
timeouts off (``parsing_timeout=None``, ``timeout_seconds=None``), and the timeout is enforced from
outside: the calls run in one long-lived child process (``python -m selfplay.tasks.math_grader``,
JSON lines over its stdin/stdout), the parent waits for each answer with ``select`` (which works in any
thread), and an answer that runs past ``timeout_s`` has its child killed (a runaway sympy computation
cannot be interrupted from inside Python), scores 0 and is counted; the next answer starts a new child.

Choices:

* A child process rather than a thread: a thread that runs past its deadline cannot be stopped and
  keeps a core busy for the rest of the run.
* One child per grader, started on first use and reused; it exits when its stdin closes, so it never
  outlives the process that owns it. The child caches parsed references, so a reference is parsed once
  however many samples it grades. The start-up (importing sympy) is not counted against any answer.
* The grader pickles without its child (to travel to a Ray actor) and starts a fresh one there.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
import weakref
from typing import Any

from selfplay.tasks.grading import Grader, GraderTimeout

START_TIMEOUT_S = 120.0


class MathGrader(Grader):
    """``verify(parse(reference answer), parse(response answer))`` with math-verify's defaults otherwise."""

    kind = "math"

    def __init__(self, timeout_s: float = 5.0, **kw: Any) -> None:
        super().__init__(**kw)
        if not timeout_s > 0:
            raise ValueError(f"grader timeout_s: must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._child: _Child | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_child"] = None
        return state

    def _answer(self, response: str) -> list[str] | None:
        found = super()._answer(response)
        return None if found is None else readings(found, structured=found != response.strip())

    def _gold(self, text: str, structured: bool = False) -> list[str]:
        texts = readings(text, structured)
        if not self._call({"op": "parse", "texts": texts}).get("parsed"):
            raise ValueError(f"math-verify parses nothing from the reference's answer {text[-80:]!r}")
        return texts

    def _compare(self, answer: list[str], gold: list[str]) -> float:
        return float(bool(self._call({"op": "verify", "gold": gold, "answer": answer})["correct"]))

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._child is None or not self._child.alive():
                self._child = _Child()
            try:
                reply = self._child.ask(request, self.timeout_s)
            except GraderTimeout:
                self._child.kill()
                self._child = None
                raise
            except (OSError, EOFError) as exc:  # the child died: start a new one next time
                self._child.kill()
                self._child = None
                raise RuntimeError(f"math-verify child process failed: {exc}") from None
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self) -> None:
        """Stop the child process (it also stops by itself when this process exits)."""
        with self._lock:
            if self._child is not None:
                self._child.kill()
                self._child = None


class _Child:
    """One child process serving math-verify calls, one JSON line in, one out."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "selfplay.tasks.math_grader"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self._buffer = b""
        self._reap = weakref.finalize(self, _reap, self.proc)  # also at exit: no child or pipe outlives us
        ready = self._read_line(START_TIMEOUT_S, "starting math-verify")
        if json.loads(ready).get("ready") is not True:
            raise RuntimeError(f"math-verify child process did not start: {ready!r}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        what = (request.get("answer") or request.get("texts") or [""])[0]
        return json.loads(self._read_line(timeout_s, f"math-verify on {str(what)[:60]!r}"))

    def _read_line(self, timeout_s: float, what: str) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GraderTimeout(f"{what} took over {timeout_s:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise EOFError(f"the child process exited (code {self.proc.poll()}) during {what}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def kill(self) -> None:
        self._reap()


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


# ------------------------------------------------------------------------------------------ the child side
def serve() -> None:
    """The child's loop: read requests from stdin until it closes, answer each on stdout."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled": we know, we enforce it
    from math_verify import parse, verify

    parsed: dict[str, Any] = {}
    out = sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    for raw in sys.stdin.buffer:
        try:
            request = json.loads(raw)
            if request["op"] == "parse":
                reply: dict[str, Any] = {"parsed": bool(_parse(parse, parsed, request["texts"]))}
            else:
                gold = _parse(parse, parsed, request["gold"])
                answer = _parse(parse, {}, request["answer"])
                reply = {"correct": bool(gold and answer and verify(gold, answer, timeout_seconds=None))}
        except Exception as exc:  # noqa: BLE001  (reported to the parent, which counts it)
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


def _parse(parse: Any, cache: dict[str, Any], texts: list[str]) -> Any:
    """The first non-empty parse of ``texts`` (the readings of one answer, in order)."""
    key = "\x00".join(texts)
    if key not in cache:
        if len(cache) > 65536:
            cache.clear()
        cache[key] = []
        for text in texts:
            cache[key] = parse(text, parsing_timeout=None)
            if cache[key]:
                break
    return cache[key]


_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")


def readings(text: str, structured: bool) -> list[str]:
    """How math-verify should read an answer, in order of preference.

    An answer found by extraction (a ``\\boxed{}``'s content, the text after ``####``) is usually a bare
    expression: math-verify's LaTeX reader needs it in ``$...$`` (it reads ``x+1`` only so), with the raw
    text as a second try. Text with words in it (a whole response, ``#### about 12``) is read raw, where
    math-verify finds the answer itself: in ``$...$`` its words would read as products of symbols."""
    delimited = any(d in text for d in ("$", "\\(", "\\["))
    wrapped = [] if delimited or _WORD.search(text) else [f"${text}$"]
    return wrapped + [text] if structured else [text] + wrapped


if __name__ == "__main__":
    serve()
