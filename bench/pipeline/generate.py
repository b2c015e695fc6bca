"""Stage 1 of the script pipeline: load a checkpoint into vLLM and sample ``n`` answers per prompt.

    python bench/pipeline/generate.py --model DIR --prompts prompts.jsonl --out samples.jsonl --timings t.json

Prompts are rendered with the checkpoint's chat template (one user turn, generation prompt added), as
a chat model is prompted. The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, its
fastest start on CPU), fp32, eager.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="JSONL with prompt_id, prompt, reference")
    ap.add_argument("--out", required=True)
    ap.add_argument("--timings", required=True)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-model-len", type=int, default=512)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(args.model)
    ids = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False) for r in rows]
    llm = LLM(model=args.model, dtype="float32", enforce_eager=True, max_model_len=args.max_model_len, seed=args.seed)
    params = SamplingParams(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": list(p)} for p in ids], params, use_tqdm=False)
    work = time.perf_counter() - start
    with open(args.out, "w") as f:
        for r, out in zip(rows, outputs):
            for j, c in enumerate(out.outputs):
                f.write(json.dumps({**r, "sample_index": j, "response": c.text}) + "\n")
    with open(args.timings, "w") as f:
        json.dump({"work_s": {"generate": work}}, f)


if __name__ == "__main__":
    main()
