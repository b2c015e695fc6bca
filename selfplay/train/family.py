"""Objective families: what kind of round a loss trains, chosen once from ``train.loss.type``.

The loss formula is a pure function of :mod:`selfplay.losses`; a family is the rest of what a loss
decides about a round:

* the reference columns it needs (``reference_keys``: the completions the reference pass scores, and
  ``train_columns``: what a round refuses to start without), or none at all (``needs_reference``);
* its encoding: how a pairs table becomes the rows it trains on (KTO: two unpaired rows per pair);
* its per-step hook, run on every rank before the step's micro-batches (KTO's reference point ``z0``);
* its micro-batch loss (one function of :mod:`selfplay.train.objective`) and what a step's summed loss
  is divided by (examples; SFT: completion tokens).

Families: :data:`PAIRS` (DPO and the other pair losses that compare with stored reference log-probs),
:data:`REFERENCE_FREE_PAIRS` (SimPO, ORPO, SLiC), :data:`KTO`, :data:`TDPO` (pairs, plus a frozen
reference model's logits in the step: its token-level KL cannot be stored as a column) and :data:`SFT`
(NLL of the chosen side; the warm start too). :func:`family_for` is the one place that maps a loss type
to its family (``FAMILIES``); the learner, its reference pass and the loop's stages ask the family
(``family.needs_reference``) instead of comparing loss names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from selfplay.losses import LOSS_PARAMS, REFERENCE_FREE
from selfplay.records import KTO_REF_COLUMNS, REF_COLUMNS
from selfplay.train.batches import Micro, Step
from selfplay.train.data import Encoded, encode_pairs, encode_sft, kl_partners, kto_view, scored_mask
from selfplay.train.objective import (
    kto_objective,
    kto_step_kl,
    pair_objective,
    sft_objective,
    shares_prefix,
    tdpo_objective,
)
from selfplay.train.reference import kto_scoring_view, require_columns

REFERENCE_COLUMN: dict[str, str] = dict(zip(("chosen", "rejected", "kl_chosen", "kl_rejected"),
                                            (*REF_COLUMNS, *KTO_REF_COLUMNS)))
"""The reference pass's column for each completion it scores."""

SFT_COLUMNS = ("prompt", "chosen", "chosen_token_ids", "weight")
"""What an SFT round keeps of a pairs table: the chosen side is the target (``rejected`` may be null)."""


class Trainee(Protocol):
    """What a family reads of the learner it trains. Read when a micro-batch runs, not when the family
    is bound: a LoRA learner rebuilds its engine at the start of some rounds."""

    engine: Any
    ref_model: Any
    tokenizer: Any
    cfg: Any
    pad_id: int
    device: torch.device
    world_size: int
    share_prefix: bool
    split_keys: bool
    seed: int


MicroLoss = Callable[[Encoded, Micro], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class Objective:
    """A family bound to one round's encoded rows on one learner: what ``optimizer_step`` runs."""

    loss: MicroLoss
    """Summed weighted loss of one micro-batch, and its statistics (:data:`~selfplay.train.objective.STAT_KEYS`)."""
    denominator: Callable[[Encoded, Step], float]
    """What the step's summed loss is divided by (over all ranks and micro-batches)."""
    per_step: Callable[[tuple[Micro, ...]], None] | None = None
    """Run on every rank with its micro-batches before any of them (collective)."""


def examples(data: Encoded, step: Step) -> float:
    return step.count


class Family:
    """Pair losses against stored reference log-probs (DPO and most of :mod:`selfplay.losses`)."""

    name = "pairs"
    kind = "train"
    """The round's kind in its metrics and checkpoints (``sft`` rounds log no rewards)."""
    reference_keys: tuple[str, ...] = ("chosen", "rejected")
    """The completions the reference pass scores (:data:`REFERENCE_COLUMN` names their columns)."""
    train_columns: tuple[str, ...] = REF_COLUMNS
    """Reference columns a round refuses to start without."""
    frozen_reference = False
    """Whether the learner keeps a frozen copy of the reference model for the round (TDPO)."""

    @property
    def needs_reference(self) -> bool:
        """Whether the reference pass scores anything (else the pairs go to training as they are)."""
        return bool(self.reference_keys)

    def rows(self, table: pa.Table) -> pa.Table:
        """The columns of a pairs table this family trains on."""
        return table

    def encode(self, learner: Trainee, table: pa.Table, cfg: Any) -> Encoded:
        return encode_pairs(table, learner.tokenizer, cfg)

    def reference_view(self, data: Encoded, seed: int) -> tuple[Encoded, tuple[str, ...]]:
        """The encoded pairs the reference pass scores, and which of their completions."""
        return data, self.reference_keys

    def check(self, table: pa.Table, cfg: Any) -> None:
        """Raise unless ``table`` holds the reference columns a round needs, computed under ``cfg``'s limits."""
        require_columns(table, self.train_columns, cfg)

    def bind(self, learner: Trainee, data: Encoded, cfg: Any) -> Objective:
        loss, share = cfg.loss, shares_prefix(learner.engine, data, learner.share_prefix)
        return Objective(lambda d, m: pair_objective(learner.engine, d, m, loss, learner.pad_id, learner.device,
                                                     share_prefix=share, split=learner.split_keys), examples)


class ReferenceFreePairs(Family):
    """Pair losses that read no reference (SimPO, ORPO, SLiC): the reference pass is skipped."""

    name = "reference_free"
    reference_keys = ()
    train_columns = ()

    def check(self, table: pa.Table, cfg: Any) -> None:
        pass


class Tdpo(Family):
    """TDPO: token-level KL against the reference's full next-token distribution, so besides the stored
    columns (which the loop's drift measurement reads) the learner keeps a frozen reference model and
    runs it in the same step (see ``reference.py``)."""

    name = "tdpo"
    train_columns = ()
    frozen_reference = True

    def check(self, table: pa.Table, cfg: Any) -> None:
        pass

    def bind(self, learner: Trainee, data: Encoded, cfg: Any) -> Objective:
        loss, share = cfg.loss, shares_prefix(learner.engine, data, learner.share_prefix)
        return Objective(lambda d, m: tdpo_objective(learner.engine, d, m, loss, learner.pad_id, learner.device,
                                                     learner.ref_model, share_prefix=share), examples)


class Kto(Family):
    """KTO: each pair gives a desirable and an undesirable row (``data.kto_view``), each with a mismatched
    completion whose reference log-prob estimates the KL term (``data.kl_partners``)."""

    name = "kto"
    reference_keys = ("chosen", "rejected", "kl_chosen", "kl_rejected")
    train_columns = (*REF_COLUMNS, *KTO_REF_COLUMNS)

    def encode(self, learner: Trainee, table: pa.Table, cfg: Any) -> Encoded:
        return kto_view(encode_pairs(table, learner.tokenizer, cfg), learner.seed)

    def reference_view(self, data: Encoded, seed: int) -> tuple[Encoded, tuple[str, ...]]:
        return kto_scoring_view(data, kl_partners(len(data), seed)), self.reference_keys

    def bind(self, learner: Trainee, data: Encoded, cfg: Any) -> Objective:
        loss, share = cfg.loss, shares_prefix(learner.engine, data, learner.share_prefix)
        step_kl = {"mean": 0.0}

        def per_step(micros: tuple[Micro, ...]) -> None:  # z0 from the whole step, all ranks, before any backward
            step_kl["mean"] = kto_step_kl(learner.engine, data, micros, learner.pad_id, learner.device,
                                          learner.world_size)

        return Objective(lambda d, m: kto_objective(learner.engine, d, m, loss, learner.pad_id, learner.device,
                                                    step_kl["mean"], share_prefix=share), examples, per_step)


class Sft(Family):
    """Supervised fine-tuning: mean NLL per completion token of the chosen side (rejection-sampling
    fine-tuning when the rows are each prompt's best verified sample), and of the warm start's reference
    answers. Its examples are encoded under the learner's own length limits (a warm start's config has none)."""

    name = "sft"
    kind = "sft"
    reference_keys = ()
    train_columns = ()

    def rows(self, table: pa.Table) -> pa.Table:
        return table.select([c for c in SFT_COLUMNS if c in table.column_names])

    def encode(self, learner: Trainee, table: pa.Table, cfg: Any) -> Encoded:
        base = learner.cfg
        return encode_sft(table, learner.tokenizer, max_prompt_length=base.max_prompt_length,
                          max_completion_length=base.max_completion_length, truncation=base.truncation)

    def check(self, table: pa.Table, cfg: Any) -> None:
        pass

    def bind(self, learner: Trainee, data: Encoded, cfg: Any) -> Objective:
        n_tokens = np.asarray([sum(scored_mask(data, "completion", i)) for i in range(len(data))], dtype=np.int64)
        tokens = lambda d, step: sum(int(n_tokens[i]) for m in step.micros for i, real in zip(m.indices, m.real)
                                     if real)
        return Objective(lambda d, m: sft_objective(learner.engine, d, m, learner.pad_id, learner.device), tokens)


PAIRS, REFERENCE_FREE_PAIRS, TDPO, KTO, SFT = Family(), ReferenceFreePairs(), Tdpo(), Kto(), Sft()

FAMILIES: dict[str, Family] = {**{t: REFERENCE_FREE_PAIRS if t in REFERENCE_FREE else PAIRS for t in LOSS_PARAMS},
                               "kto": KTO, "tdpo": TDPO, "sft": SFT}
"""Every loss type (``train.loss.type``) -> its family."""


def family_for(loss: Any) -> Family:
    """The family of a ``LossConfig`` (or of a loss type name)."""
    name = loss if isinstance(loss, str) else loss.type
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"train.loss.type: unknown loss {name!r}; allowed: {', '.join(sorted(FAMILIES))}") from None
