"""The arms of ``bench.efficacy``, their tunable settings, and the tasks the table runs on.

An arm is two sets of ``--set`` overrides on a recipe:

* its *structure* (``arm_overrides``): judge, pairing, loss type, reference, and for ``dpo_offline`` the
  one iteration over the whole budget. Fixed: it is what makes the arm that algorithm.
* its *settings* (``settings_overrides``): learning rate, epochs per round, beta, ``nll_weight``. These
  are what ``--tune`` searches (``bench.efficacy_tune``) and what ``bench/efficacy_tuned.yaml`` records.

Arms (everything not named is the recipe's):

* ``sft``: continued SFT on the reference answers of the same prompts (judge ``sft``, pairing
  ``reference`` capped at one row per prompt, loss ``sft``): SPIN's rows with the rejected side dropped.
* ``rft``: rejection-sampling fine-tuning (pairing ``best``, loss ``sft``): SFT on each prompt's first
  verified-correct sample (RAFT / ReST / STaR).
* ``dpo_offline``: DPO on pairs sampled once from the start policy: one iteration over all
  ``iterations x prompts_per_iteration`` prompts (same samples, reference ``initial``).
* ``dpo_previous`` / ``dpo_initial``: iterative DPO with the previous / the initial policy as reference.
* ``rpo``: Iterative RPO (Pang et al. 2024): iterative DPO (reference ``previous``) plus the chosen
  answer's NLL at weight 1 (``train.loss.nll_weight``). So ``dpo_previous`` against ``rpo`` is the
  ``nll_weight`` 0 vs 1 comparison, each at its own tuned learning rate, beta and epochs.
* ``dpop``, ``ipo``, ``kto``: those losses; ``simpo`` keeps the SimPO paper's gamma/beta ratio of 0.5
  whatever beta the search tries (at beta 0.1 its margin term vanishes).
* ``spin``: SPIN (judge ``sft``, the reference answer against one differing sample per prompt, DPO
  loss, reference ``previous``).

The named losses stay plain (``nll_weight`` 0) in their own arms, so the table says how DPO, IPO,
SimPO, KTO and SPIN themselves do; the NLL term is tested once, as ``rpo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALL_ARMS = ("sft", "rft", "dpo_offline", "dpo_previous", "dpo_initial", "rpo", "dpop", "ipo", "simpo", "kto",
            "spin")
PREFERENCE_ARMS = ("dpo_offline", "dpo_previous", "dpo_initial", "rpo", "dpop", "ipo", "simpo", "kto", "spin")
QUICK_ARMS = ("sft", "rft", "dpo_previous", "rpo", "dpop", "spin")
"""``--quick``: SFT and RFT (the baselines), plain iterative DPO against Iterative RPO and DPOP (the chosen
log-prob claim, nll_weight 0 vs 1), and SPIN."""
BEST = "best"
"""Stands for the best preference arm in a task's arm list (``resolve_arms``)."""
REDUCED_ARMS = ("sft", "rft", "dpo_previous", BEST, "spin")
"""The arms of the table's other tasks (issue 26: sft, rft, plain DPO, the best preference arm, spin)."""

SFT_LR = (1e-4, 3e-4, 1e-3, 3e-3)
PREF_LR = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
EPOCHS = (2, 1, 3)
"""Epochs per round: the default first, then the alternatives the search tries."""


@dataclass(frozen=True)
class ArmSpace:
    """What ``--tune`` searches for one arm: the coarse learning-rate grid and, at its best point, the
    alternatives of each other setting (the first value of ``epochs`` / ``beta`` is the default)."""

    lr: tuple[float, ...]
    epochs: tuple[int, ...] = EPOCHS
    beta: tuple[float, ...] | None = None
    nll_weight: float | None = None
    """Fixed by the arm (0: the plain loss; 1: Iterative RPO); None where the loss has no pair NLL term."""

    def default(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lr": self.lr[len(self.lr) // 2], "epochs": self.epochs[0]}
        if self.beta is not None:
            out["beta"] = self.beta[0]
        if self.nll_weight is not None:
            out["nll_weight"] = self.nll_weight
        return out


_DPO_BETA = (0.1, 0.03, 0.5)
SPACES: dict[str, ArmSpace] = {
    "sft": ArmSpace(SFT_LR),
    "rft": ArmSpace(SFT_LR),
    "dpo_offline": ArmSpace(PREF_LR, beta=_DPO_BETA, nll_weight=0.0),
    "dpo_previous": ArmSpace(PREF_LR, beta=_DPO_BETA, nll_weight=0.0),
    "dpo_initial": ArmSpace(PREF_LR, beta=_DPO_BETA, nll_weight=0.0),
    "rpo": ArmSpace(PREF_LR, beta=_DPO_BETA, nll_weight=1.0),
    "dpop": ArmSpace(PREF_LR, beta=_DPO_BETA, nll_weight=0.0),
    "ipo": ArmSpace(PREF_LR, beta=_DPO_BETA, nll_weight=0.0),
    "simpo": ArmSpace(PREF_LR, beta=(2.0, 1.0, 5.0), nll_weight=0.0),
    "kto": ArmSpace(PREF_LR, beta=_DPO_BETA),
    "spin": ArmSpace(PREF_LR, beta=_DPO_BETA, nll_weight=0.0),
}


def _loss(kind: str, *extra: str) -> list[str]:
    return [f"train.loss.type={kind}", "train.loss.params={}", "train.loss.nll_weight=0.0", *extra]


def arm_overrides(arm: str, base: Any) -> list[str]:
    """``--set`` overrides that turn the recipe ``base`` (a RunConfig, at the run's budget) into ``arm``."""
    spin_rows = ["judge.type=sft", "pairing.strategy=reference", "pairing.max_pairs_per_prompt=1"]
    budget = base.iterations * base.generation.prompts_per_iteration
    table = {
        "sft": [*spin_rows, *_loss("sft")],
        "rft": ["pairing.strategy=best", *_loss("sft")],
        "dpo_offline": [*_loss("sigmoid"), "iterations=1", f"generation.prompts_per_iteration={budget}",
                        "train.reference=initial"],
        "dpo_previous": [*_loss("sigmoid"), "train.reference=previous"],
        "dpo_initial": [*_loss("sigmoid"), "train.reference=initial"],
        "rpo": [*_loss("sigmoid"), "train.reference=previous"],
        "spin": [*spin_rows, *_loss("sigmoid"), "train.reference=previous"],
        "ipo": _loss("ipo"),
        "dpop": _loss("dpop"),
        "simpo": _loss("simpo"),
        "kto": _loss("kto"),
    }
    if arm not in table:
        raise ValueError(f"--arms: unknown arm {arm!r}; known: {', '.join(ALL_ARMS)}")
    out = table[arm]
    if arm not in ("sft", "spin") and base.judge is not None and base.judge.type == "sft":
        raise ValueError(f"arm {arm}: the recipe's judge is `sft`; the preference arms need a verifier")
    if arm not in ("sft", "spin", "rft") and base.pairing_strategy in ("reference", "best"):
        out = ["pairing.strategy=best_worst", *out]
    return out


def settings_overrides(arm: str, settings: dict[str, Any]) -> list[str]:
    """``--set`` overrides of one point of ``arm``'s search space (``lr``, ``epochs``, ``beta``, ``nll_weight``)."""
    unknown = sorted(set(settings) - {"lr", "epochs", "beta", "nll_weight"})
    if unknown:
        raise ValueError(f"arm {arm}: unknown setting(s) {unknown}; known: lr, epochs, beta, nll_weight")
    out = []
    if "lr" in settings:
        out.append(f"train.learning_rate={float(settings['lr'])!r}")
    if "epochs" in settings:
        out.append(f"train.epochs={int(settings['epochs'])}")
    if "beta" in settings:
        beta = float(settings["beta"])
        out.append(f"train.loss.beta={beta!r}")
        if arm == "simpo":  # the paper's gamma/beta ratio of 0.5 at every beta
            out.append(f"train.loss.params={{gamma: {beta / 2!r}}}")
    if "nll_weight" in settings:
        out.append(f"train.loss.nll_weight={float(settings['nll_weight'])!r}")
    return out


def describe(settings: dict[str, Any] | None) -> str:
    """Settings as the table prints them: ``lr 1e-04 ep 2 β 0.1 nll 1``."""
    if not settings:
        return "-"
    parts = []
    if "lr" in settings:
        parts.append(f"lr {settings['lr']:.0e}")
    if "epochs" in settings:
        parts.append(f"ep {settings['epochs']}")
    if "beta" in settings:
        parts.append(f"β {settings['beta']:g}")
    if settings.get("nll_weight"):
        parts.append(f"nll {settings['nll_weight']:g}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class TaskRow:
    """One task of the table: a recipe with a verifier, overrides on it, and the arms it runs."""

    name: str
    recipe: str
    """Path of the recipe, relative to the repository root (or absolute)."""
    overrides: tuple[str, ...] = ()
    arms: tuple[str, ...] = ALL_ARMS
    eval_prompts: int | None = 1000
    """``evaluation.num_prompts`` of every run (about half in each split); None keeps the recipe's."""
    spin_prompts: int = 250
    """The SPIN regime's fixed prompt set (its "SFT data", ``generation.prompt_source: fixed``): this many
    prompts, the same in every iteration of the plateau run and of the runs after it."""

    def eval_overrides(self) -> tuple[str, ...]:
        return () if self.eval_prompts is None else (f"evaluation.num_prompts={self.eval_prompts}",)


TASKS: dict[str, TaskRow] = {
    "quickstart": TaskRow("quickstart", "recipes/quickstart.yaml"),
    # reasoning-gym tasks with answers short enough for the nano models (at most 7 characters), on
    # `recipes/reasoning_gym.yaml`, each prompt the bare problem as that recipe does: spell_backward
    # (reverse a 5-7 letter word: one right answer; at 3-6 letters the start scored 0.95, no room) and
    # palindrome_generation (arrange 3-6 given letters into a palindrome: any arrangement that reads the
    # same both ways is right, so the reference answer is one of several). chain_sum was dropped: its
    # warm starts began at 3-4% (docs/efficacy.md, Tasks).
    "rg_spell_backward": TaskRow("rg_spell_backward", "recipes/reasoning_gym.yaml", (
        "task.name=spell_backward", "task.config={min_word_len: 5, max_word_len: 7}",
        "task.prompt_template='{metadata[word]}='"), REDUCED_ARMS),
    "rg_palindrome": TaskRow("rg_palindrome", "recipes/reasoning_gym.yaml", (
        "task.name=palindrome_generation", "task.config={min_length: 3, max_length: 6}",
        "task.prompt_template='{metadata[letters]}='"), REDUCED_ARMS),
}
TABLE_TASKS = ("quickstart", "rg_spell_backward", "rg_palindrome")


def resolve_arms(arms: tuple[str, ...], best: str | None) -> tuple[str, ...]:
    """``arms`` with ``BEST`` replaced by ``best`` (dropped when unknown), duplicates removed in order."""
    out = [best if a == BEST else a for a in arms]
    return tuple(dict.fromkeys(a for a in out if a is not None))
