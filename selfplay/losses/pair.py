"""The input of every pairwise preference loss: one batch of sequence log-probs, as a small value object.

A preference batch holds B pairs. For each pair we have the policy's and the reference's log-probability
of the chosen and of the rejected completion, each **summed over the completion tokens** (shape ``[B]``),
and optionally the completion lengths (number of completion tokens, ``[B]``) for the length-normalised
losses. The losses only ever need a few derived quantities (log-ratios, per-token averages, DPO rewards);
they are properties here so that every loss reads the same way and none recomputes them differently.

Choices:

* Lengths are clamped to at least 1 before dividing, as TRL 1.16 does, so an empty completion (whose
  summed log-prob is 0) gives an average of 0 instead of NaN, with no device sync to check it.
* Half-precision inputs are promoted to float32 by :func:`PairLogps.build`; float64 stays float64 (the
  equivalence tests use it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LossOutput = tuple[Tensor, Tensor, Tensor]
"""``(losses[B], chosen_rewards[B], rejected_rewards[B])``; rewards are detached, for logging."""


@dataclass(frozen=True)
class PairLogps:
    """Summed completion log-probs of B (chosen, rejected) pairs; ``ref_*`` and lengths may be ``None``."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None

    @classmethod
    def build(
        cls,
        policy_chosen: Tensor,
        policy_rejected: Tensor,
        ref_chosen: Tensor | None = None,
        ref_rejected: Tensor | None = None,
        chosen_lengths: Tensor | None = None,
        rejected_lengths: Tensor | None = None,
    ) -> PairLogps:
        """Check that every given tensor is 1-D of the same length B, and promote to a float dtype."""
        named = {
            "policy_chosen_logps": policy_chosen,
            "policy_rejected_logps": policy_rejected,
            "ref_chosen_logps": ref_chosen,
            "ref_rejected_logps": ref_rejected,
            "chosen_lengths": chosen_lengths,
            "rejected_lengths": rejected_lengths,
        }
        given = {name: t for name, t in named.items() if t is not None}
        for name, t in given.items():
            if not isinstance(t, Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 1:
                raise ValueError(f"{name} must be 1-D [B] (one value per pair), got shape {tuple(t.shape)}")
        shapes = {name: tuple(t.shape) for name, t in given.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"all log-prob and length tensors must have the same shape [B]; got {shapes}")
        dtype = torch.promote_types(policy_chosen.dtype, torch.float32)

        def cast(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(dtype)

        def lengths(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(dtype).clamp(min=1.0)

        return cls(
            cast(policy_chosen),  # type: ignore[arg-type]
            cast(policy_rejected),  # type: ignore[arg-type]
            cast(ref_chosen),
            cast(ref_rejected),
            lengths(chosen_lengths),
            lengths(rejected_lengths),
        )

    # --- reference-based quantities -------------------------------------------------------------------
    @property
    def chosen_logratios(self) -> Tensor:
        """``log pi(y_w|x) - log pi_ref(y_w|x)``, summed over tokens, [B]."""
        return self.policy_chosen - _need(self.ref_chosen, "ref_chosen_logps")

    @property
    def rejected_logratios(self) -> Tensor:
        """``log pi(y_l|x) - log pi_ref(y_l|x)``, summed over tokens, [B]."""
        return self.policy_rejected - _need(self.ref_rejected, "ref_rejected_logps")

    @property
    def margin(self) -> Tensor:
        """The DPO implicit-reward margin over beta: ``h = chosen_logratios - rejected_logratios``, [B]."""
        return self.chosen_logratios - self.rejected_logratios

    @property
    def normalized_margin(self) -> Tensor:
        """``chosen_logratios / |y_w| - rejected_logratios / |y_l|`` (per-token log-ratios), [B]."""
        return self.chosen_logratios / self.lengths[0] - self.rejected_logratios / self.lengths[1]

    def dpo_rewards(self, beta: float) -> tuple[Tensor, Tensor]:
        """``beta * logratio`` (token sums) for chosen and rejected, detached: TRL's logged rewards."""
        return beta * self.chosen_logratios.detach(), beta * self.rejected_logratios.detach()

    # --- policy-only quantities -----------------------------------------------------------------------
    @property
    def lengths(self) -> tuple[Tensor, Tensor]:
        """(chosen_lengths, rejected_lengths), each clamped to >= 1."""
        return _need(self.chosen_lengths, "chosen_lengths"), _need(self.rejected_lengths, "rejected_lengths")

    @property
    def policy_chosen_avg(self) -> Tensor:
        """Per-token average policy log-prob of the chosen completion, [B]."""
        return self.policy_chosen / self.lengths[0]

    @property
    def policy_rejected_avg(self) -> Tensor:
        """Per-token average policy log-prob of the rejected completion, [B]."""
        return self.policy_rejected / self.lengths[1]


def _need(t: Tensor | None, name: str) -> Tensor:
    if t is None:
        raise ValueError(f"this loss needs {name}, which was not given")
    return t
