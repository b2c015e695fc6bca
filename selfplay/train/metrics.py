"""Per-optimizer-step training metrics: one JSON line each in ``train_metrics.jsonl``, and TensorBoard.

Only rank 0 writes. Lines are appended and flushed per step, so a killed round leaves every completed
step on disk; a resumed round appends after them (its steps carry the same ``round``/``step`` keys, so a
reader can de-duplicate). TensorBoard is imported lazily: it is optional for the library.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Append-only metrics sink; ``None`` directory means metrics are only kept in memory."""

    def __init__(self, out_dir: str | Path | None, tensorboard: bool = True,
                 tensorboard_dir: str | Path | None = None) -> None:
        """``train_metrics.jsonl`` goes to ``out_dir``, TensorBoard events to ``tensorboard_dir`` (default:
        ``out_dir/tensorboard``); nothing is written without ``out_dir``."""
        self.dir = Path(out_dir) if out_dir is not None else None
        self.tb_dir = (Path(tensorboard_dir) if tensorboard_dir is not None
                       else self.dir / "tensorboard" if self.dir is not None else None)
        self._tb = None
        self._tb_wanted = tensorboard
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path | None:
        return None if self.dir is None else self.dir / "train_metrics.jsonl"

    def write(self, record: dict[str, Any], global_step: int, prefix: str = "train") -> None:
        if self.dir is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
        tb = self._writer()
        if tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                    tb.add_scalar(f"{prefix}/{key}", value, global_step)
            tb.flush()

    def _writer(self):
        if self._tb is None and self._tb_wanted and self.dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a declared dependency
                self._tb_wanted = False
                return None
            self._tb = SummaryWriter(log_dir=str(self.tb_dir))
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)
