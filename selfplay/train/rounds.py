"""The per-round settings of the learner, and the step/round records it logs and returns.

``RoundSpec`` is the part of a config that may change from one round to the next (learning rate and
schedule, epochs, batch sizes, clipping, weight decay); it is read from a ``TrainConfig`` or from a
``WarmStartConfig`` (fields it lacks fall back to the learner's ``TrainConfig``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from selfplay.train.schedule import lr_lambda


@dataclass(frozen=True)
class RoundSpec:
    learning_rate: float
    lr_schedule: str
    warmup_ratio: float
    epochs: int
    micro_batch_size: int
    accumulation: int
    max_grad_norm: float
    weight_decay: float
    checkpoint_every: int
    length_grouping: str = "random"
    warmup_steps: int | None = None

    @classmethod
    def of(cls, cfg: Any, base: Any) -> RoundSpec:
        get = lambda name, default=None: getattr(cfg, name, getattr(base, name, default))
        return cls(
            learning_rate=float(get("learning_rate")),
            lr_schedule=str(get("lr_schedule")),
            warmup_ratio=float(get("warmup_ratio")),
            epochs=int(get("epochs")),
            micro_batch_size=int(get("micro_batch_size")),
            accumulation=int(getattr(cfg, "gradient_accumulation_steps", 1)),
            max_grad_norm=float(get("max_grad_norm")),
            weight_decay=float(get("weight_decay", 0.0)),
            checkpoint_every=int(get("checkpoint_every", 0)),
            length_grouping=str(get("length_grouping", "random")),
            warmup_steps=getattr(cfg, "warmup_steps", None),
        )

    def apply(self, engine: Any, optimizer: torch.optim.Optimizer) -> None:
        """Set this round's peak lr, weight decay and clipping on the live optimizer and engine."""
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.learning_rate
            group["weight_decay"] = self.weight_decay if group.get("decay", True) else 0.0
        engine._config.gradient_clipping = self.max_grad_norm
        if hasattr(engine.optimizer, "clip_grad"):  # ZeRO optimizers copy it at construction
            engine.optimizer.clip_grad = self.max_grad_norm

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int, position: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
        """A LambdaLR for this round, positioned after ``position`` completed optimizer steps."""
        fn = lr_lambda(self.lr_schedule, total_steps, self.warmup_ratio, self.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
        if position:
            sched.last_epoch = position
            lrs = [base * fn(position) for base in sched.base_lrs]
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr
            sched._last_lr = lrs
        return sched


def metrics_record(kind: str, stats: dict[str, float], denom: float, seconds: float, *, lr: float,
                   grad_norm: float | None, round_index: int, step: int, global_step: int, epoch: int
                   ) -> dict[str, Any]:
    """One line of ``train_metrics.jsonl`` from the all-reduced statistics of an optimizer step."""
    div = lambda a, b: stats[a] / stats[b] if stats[b] else float("nan")
    record: dict[str, Any] = {
        "kind": kind,
        "round": round_index,
        "step": step,
        "global_step": global_step,
        "epoch": epoch,
        "loss": stats["loss"] / denom if denom else float("nan"),
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "lr": lr,
        "examples": int(stats["count"]),
        "tokens_per_s": stats["tokens"] / seconds,
        "examples_per_s": stats["count"] / seconds,
        "seconds": seconds,
    }
    if kind == "sft":
        record["logps"] = div("chosen_logps", "chosen_count")
        return record
    record.update(
        chosen_reward=div("chosen_rewards", "chosen_count"),
        rejected_reward=div("rejected_rewards", "rejected_count"),
        reward_accuracy=div("correct", "count"),
        chosen_logps=div("chosen_logps", "chosen_count"),
        rejected_logps=div("rejected_logps", "rejected_count"),
    )
    record["reward_margin"] = record["chosen_reward"] - record["rejected_reward"]
    if stats["kl"]:
        record["kl"] = div("kl", "count")
    return record


def summary(kind: str, records: list[dict[str, Any]], data_stats: dict[str, int], start: int, total: int,
            seconds: float) -> dict[str, Any]:
    """What a round returns: counts, first/last/mean loss, final reward statistics, throughput."""
    losses = [r["loss"] for r in records]
    out: dict[str, Any] = {
        "kind": kind,
        "steps": total,
        "steps_run": len(records),
        "resumed_at_step": start,
        **{f"{k}": v for k, v in data_stats.items()},
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": losses[-1] if losses else float("nan"),
        "loss_mean": sum(losses) / len(losses) if losses else float("nan"),
        "seconds": seconds,
        "examples_per_s": sum(r["examples"] for r in records) / seconds if seconds else float("nan"),
        "global_step": records[-1]["global_step"] if records else None,
        "losses": losses,
        "grad_norms": [r["grad_norm"] for r in records],
    }
    if records and kind != "sft":
        last = records[-1]
        for key in ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logps",
                    "rejected_logps"):
            out[key] = last[key]
    return out


def round_fingerprint(kind: str, table_hash: str, cfg: Any, spec: RoundSpec, world_size: int, seed: int) -> str:
    """Identity of a round (data, settings, world): a checkpoint resumes only the same round."""
    settings = cfg.model_dump() if hasattr(cfg, "model_dump") else dict(vars(cfg))
    blob = json.dumps([kind, table_hash, settings, spec.__dict__, world_size, seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
