"""Fit a Bradley-Terry reward model on a pairs file, so users can make their own ``reward_model`` judge.

    selfplay train-rm pairs.parquet --base runs/x/policy --out my_rm

Loss: ``-log sigmoid(r(prompt, chosen) - r(prompt, rejected))``, averaged over a batch of pairs.

Choices:

* ``base_model_dir`` is either a causal LM (its backbone is kept and a seeded one-logit head added) or
  an existing sequence-classification RM (fine-tuned further).
* Texts are rendered exactly as the ``reward_model`` judge renders them (``render_response``), with the
  same left truncation, so the trained model scores at judge time what it saw in training.
* fp32 AdamW, no schedule, seeded shuffling; a plain loop (an RM is small next to the policy run).
* The result is saved atomically as an ordinary HF directory, with ``selfplay_rm.json`` holding the
  training metrics (final loss, pair accuracy on the training pairs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from selfplay.judges.reward_model import load_model_and_tokenizer, render_response, save_model_dir
from selfplay.records import decode_prompt

METRICS_FILE = "selfplay_rm.json"


def read_pairs(pairs: Any) -> list[dict[str, Any]]:
    """Rows with ``prompt``, ``chosen``, ``rejected`` from a pyarrow table or a parquet/jsonl path."""
    import pyarrow as pa

    if not isinstance(pairs, pa.Table):
        path = Path(pairs)
        if path.suffix in (".jsonl", ".json"):
            import pyarrow.json as pj

            pairs = pj.read_json(path)
        else:
            import pyarrow.parquet as pq

            pairs = pq.read_table(path)
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in pairs.column_names]
    if missing:
        raise ValueError(f"pairs: missing column(s) {missing}; a pairs file has prompt, chosen, rejected")
    return pairs.select(["prompt", "chosen", "rejected"]).to_pylist()


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> Any:
    special = not getattr(tokenizer, "chat_template", None)
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                     add_special_tokens=special, return_tensors="pt")


def _rewards(model: Any, tokenizer: Any, prompts: list[Any], responses: list[str], max_length: int) -> Any:
    texts = [render_response(tokenizer, p, r) for p, r in zip(prompts, responses)]
    return model(**_encode(tokenizer, texts, max_length)).logits[:, 0].float()


def pair_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 32,
                  max_length: int = 512) -> float:
    """Fraction of pairs whose chosen response the model scores strictly higher."""
    was_training = model.training
    model.eval()
    right = 0
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            prompts = [decode_prompt(r["prompt"]) for r in batch]
            r_c = _rewards(model, tokenizer, prompts, [r["chosen"] for r in batch], max_length)
            r_r = _rewards(model, tokenizer, prompts, [r["rejected"] for r in batch], max_length)
            right += int((r_c > r_r).sum())
    model.train(was_training)
    return right / max(len(rows), 1)


def train_reward_model(
    pairs: Any,
    base_model_dir: str | Path,
    out_dir: str | Path,
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 16,
    seed: int = 0,
    max_length: int = 512,
) -> dict[str, Any]:
    """Fit a Bradley-Terry RM on ``pairs`` (table or parquet/jsonl path) starting from ``base_model_dir``;
    save it to ``out_dir``. Returns the metrics (also written to ``out_dir/selfplay_rm.json``)."""
    rows = read_pairs(pairs)
    if not rows:
        raise ValueError("pairs: the pairs file is empty")
    model, tok = load_model_and_tokenizer(base_model_dir, seed=seed, new_head=True)
    tok.truncation_side = "left"
    tok.padding_side = "right"
    model.float().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    start_time, steps, losses = time.perf_counter(), 0, []
    for _ in range(epochs):
        epoch_losses = []
        for batch_idx in torch.randperm(len(rows), generator=gen).split(batch_size):
            batch = [rows[i] for i in batch_idx.tolist()]
            prompts = [decode_prompt(r["prompt"]) for r in batch]
            r_c = _rewards(model, tok, prompts, [r["chosen"] for r in batch], max_length)
            r_r = _rewards(model, tok, prompts, [r["rejected"] for r in batch], max_length)
            loss = -F.logsigmoid(r_c - r_r).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
            steps += 1
        losses.append(sum(epoch_losses) / len(epoch_losses))
    metrics = {
        "out_dir": str(out_dir),
        "score_head": "trained",
        "pairs": len(rows),
        "epochs": epochs,
        "steps": steps,
        "epoch_loss": losses,
        "train_accuracy": pair_accuracy(model, tok, rows, max_length=max_length),
        "seconds": round(time.perf_counter() - start_time, 3),
    }
    model.eval()
    save_model_dir(model, tok, out_dir, extra={METRICS_FILE: json.dumps(metrics, indent=2) + "\n"})
    return metrics
