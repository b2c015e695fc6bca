"""Stage 3 of the script pipeline: TRL's ``DPOTrainer`` on the pairs, then ``save_pretrained``.

    python bench/pipeline/train_dpo.py --model DIR --pairs pairs.jsonl --out NEXT_DIR --timings t.json

TRL at its fastest fair setting on CPU: reference log-probs precomputed (``precompute_ref_log_probs``,
run in the constructor, with the loaded model as the reference: the previous policy), no gradient
checkpointing, no logging or saving during training, fp32. Conversational format, so the prompt is
rendered with the checkpoint's chat template, as generation saw it. Without TRL installed this script
exits with a message saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timings", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    args = ap.parse_args()
    os.environ.setdefault("ACCELERATE_USE_CPU", "1")
    try:
        from trl import DPOConfig, DPOTrainer
    except ImportError:
        sys.exit("train_dpo.py needs TRL (pip install trl); it is not installed")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [json.loads(line) for line in Path(args.pairs).read_text().splitlines()]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32")
    tok = AutoTokenizer.from_pretrained(args.model)
    cfg = DPOConfig(
        output_dir=args.out + ".trainer", per_device_train_batch_size=args.batch, num_train_epochs=args.epochs,
        learning_rate=args.lr, beta=args.beta, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=args.max_grad_norm, precompute_ref_log_probs=True, precompute_ref_batch_size=2 * args.batch,
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, max_length=None, seed=0,
    )
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)
    t1 = time.perf_counter()
    trainer.train()
    t2 = time.perf_counter()
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    t3 = time.perf_counter()
    with open(args.timings, "w") as f:
        json.dump({"work_s": {"reference+tokenize": t1 - t0, "train": t2 - t1, "save": t3 - t2},
                   "steps": trainer.state.global_step}, f)


if __name__ == "__main__":
    main()
