"""Stage 2 of the script pipeline: apply the sorting verifier to every sample and write SPIN pairs.

    python bench/pipeline/score.py --samples samples.jsonl --out pairs.jsonl --timings t.json

A sample is correct when the integers on its first line are the reference's, in order. Pairs are SPIN's:
the reference answer (chosen) against each sample that is not correct (rejected); a rejected text equal
to the reference, or repeating an earlier pair of the same prompt, is dropped.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

_INT = re.compile(r"-?\d+")


def correct(response: str, reference: str) -> bool:
    line = response.strip().splitlines()[0] if response.strip() else ""
    return [int(x) for x in _INT.findall(line)] == [int(x) for x in _INT.findall(reference)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timings", required=True)
    args = ap.parse_args()
    start = time.perf_counter()
    rows = [json.loads(line) for line in Path(args.samples).read_text().splitlines()]
    seen, pairs = set(), []
    for r in rows:
        if correct(r["response"], r["reference"]) or r["response"].strip() == r["reference"].strip():
            continue
        key = (r["prompt_id"], r["response"])
        if key in seen:
            continue
        seen.add(key)
        pairs.append({"prompt": r["prompt"], "chosen": r["reference"], "rejected": r["response"]})
    with open(args.out, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    work = time.perf_counter() - start
    with open(args.timings, "w") as f:
        json.dump({"work_s": {"score": work}, "pairs": len(pairs), "samples": len(rows)}, f)


if __name__ == "__main__":
    main()
