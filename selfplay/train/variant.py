"""How a learner's weights train: all of them (:class:`FullWeights`) or LoRA adapters on a frozen base
(:class:`LoraWeights`).

The learner holds one variant, built with its engine (:func:`weights_for` picks the class from
``train.lora``, the one place that asks), and calls it at the points where the two differ: where a model
directory's weights come from, what a round does first (LoRA: merge into the base, or train every
weight for an SFT round), which reference is the learner's own base, what an exported directory's
adapter names as its base. So the learner itself has no LoRA branch. The LoRA mechanics (PEFT wrapping,
merging, the three exports) and the reasons for these choices are in :mod:`selfplay.train.lora`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from selfplay.train.lora import adapters_disabled, base_source, enabled, same_dir, wrap

Rebuild = Callable[[Any], None]
"""Rebuilds the learner's engine from its current weights under a ``TrainConfig`` (``Learner._rebuild``)."""


class FullWeights:
    """Full fine-tuning: every weight trains, and there is nothing to track between rounds."""

    base: str | None = None
    """A directory holding exactly the weights the adapters apply to (LoRA), when known."""
    export: str | None = None
    """A directory holding the current network (LoRA: until the next step), when known."""

    @staticmethod
    def source(model_path: str | Path, cfg: Any) -> tuple[Path, Path | None]:
        """(directory to load the model from, adapter directory to load or None)."""
        return Path(model_path), None

    @classmethod
    def build(cls, model: torch.nn.Module, cfg: Any, base: Path | None, adapter: Path | None, seed: int
              ) -> tuple[torch.nn.Module, FullWeights]:
        """The model to train and the variant that tracks it."""
        return model, cls()

    def round(self, kind: str, resuming: bool, reference: str, learner_cfg: Any, rebuild: Rebuild
              ) -> AbstractContextManager[None]:
        """Entered around a round's steps (its final checkpoint included), once the plan is known."""
        return nullcontext()

    def stepped(self) -> None:
        """An optimizer step was taken, or trained weights were loaded."""

    def base_only(self, engine: Any, model_path: str | Path | None) -> AbstractContextManager[None] | None:
        """A context in which ``engine`` runs the model at ``model_path``, when that is its own base; else None."""
        return None

    def adapter_base(self, out_dir: str | Path) -> str | None:
        """The base that an HF export's ``adapter/`` into ``out_dir`` names (None: no adapter)."""
        return None

    def saved(self, out_dir: str | Path) -> None:
        """The current weights were written to ``out_dir``."""


class LoraWeights(FullWeights):
    """LoRA adapters on a frozen base (see :mod:`selfplay.train.lora` for the choices)."""

    def __init__(self, base: str | None, fresh: bool = True) -> None:
        self.base = base
        self.fresh = fresh
        """The adapters are freshly initialised (B = 0): the network equals its base."""
        self.export = None

    @staticmethod
    def source(model_path: str | Path, cfg: Any) -> tuple[Path, Path | None]:
        return base_source(model_path, cfg)

    @classmethod
    def build(cls, model: torch.nn.Module, cfg: Any, base: Path | None, adapter: Path | None, seed: int
              ) -> tuple[torch.nn.Module, FullWeights]:
        return wrap(model, cfg, adapter, seed=seed), cls(None if base is None else str(base), adapter is None)

    def round(self, kind: str, resuming: bool, reference: str, learner_cfg: Any, rebuild: Rebuild
              ) -> AbstractContextManager[None]:
        """An SFT round (a warm start: adapters on a randomly initialised policy barely learn) trains every
        weight, which then become the base, with fresh adapters. A preference round under ``reference:
        previous`` starts by merging the trained adapters into the base: the base becomes the previous
        policy, the reference of this round."""
        if kind == "sft":
            return _every_weight(learner_cfg, rebuild)
        if not resuming and not self.fresh and reference == "previous":
            rebuild(learner_cfg)
        return nullcontext()

    def stepped(self) -> None:
        self.fresh, self.export = False, None

    def base_only(self, engine: Any, model_path: str | Path | None) -> AbstractContextManager[None] | None:
        return adapters_disabled(engine) if same_dir(model_path, self.base) else None

    def adapter_base(self, out_dir: str | Path) -> str | None:
        # fresh adapters on a base known from no directory (a warm start): this one is their base
        return str(out_dir) if self.fresh and self.base is None else self.base

    def saved(self, out_dir: str | Path) -> None:
        if self.fresh and self.base is None:
            self.base = str(out_dir)
        elif not self.fresh:
            self.export = str(out_dir)


@contextmanager
def _every_weight(learner_cfg: Any, rebuild: Rebuild) -> Iterator[None]:
    rebuild(learner_cfg.model_copy(update={"lora": learner_cfg.lora.model_copy(update={"r": 0})}))
    try:
        yield
    finally:
        rebuild(learner_cfg)


def weights_for(cfg: Any) -> type[FullWeights]:
    """The variant a ``TrainConfig`` asks for."""
    return LoraWeights if enabled(cfg) else FullWeights
