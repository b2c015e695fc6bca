"""The stages of one iteration. Each reads its input artifact from the iteration directory, writes its
output atomically and returns its record, which the manifest keeps (and status shows): a typed record
(:mod:`selfplay.loop.manifest`) where a later stage reads it (pairs, train), the figures it reports otherwise.

A stage says what it needs: an :class:`Iteration` (k, its directory, the policy it starts from, its
seeds), derived from the run directory by :func:`iteration`, plus the parts it uses (the generator
pool, the judge, the learner group, the weight sync), which the driver passes in. ``rt`` is the narrow
:class:`~selfplay.loop.stages.context.StageContext`: the recipe, the run directory, the task, the log and
progress display and the sampling settings; no stage reads what another left on it. The policy that
*generates* in iteration k is iteration k-1's ``policy/`` (or the initial one) and the policy that
*trains* starts from the same directory; which weights a running learner group holds is the group's to
say (``LearnerGroup.holds``). The driver picks the stage list (offline pairs, an iteration without
pairs), so the stages themselves do not branch on those cases. That is what makes every stage resumable.

One module per stage or group of stages, in the order they run: :mod:`.initial` (prepare),
:mod:`.generation`, :mod:`.judging`, :mod:`.pairing`, :mod:`.reference`, :mod:`.training`,
:mod:`.weights` (export, sync), :mod:`.unchanged` (an iteration without pairs) and :mod:`.held_out`
(evaluate). Beside them: :mod:`.context` (what a stage knows about its iteration), :mod:`.prompts`
(prompt sampling), :mod:`.metrics_log` (a round's per-step log), :mod:`.cores` (whether scoring fits
beside generation) and :mod:`.display` (the line logged after each stage). The names are re-exported
here, so callers write ``stages.generate(...)``.
"""

from selfplay.loop.stages.context import Iteration, initial_policy, iteration, policy_before
from selfplay.loop.stages.cores import room_beside_generation
from selfplay.loop.stages.display import brief
from selfplay.loop.stages.generation import EVERY_SAMPLE, generate, scored_by_shard, shard_groups
from selfplay.loop.stages.held_out import eval_due, evaluate, evaluate_policy
from selfplay.loop.stages.initial import prepare
from selfplay.loop.stages.judging import judge
from selfplay.loop.stages.metrics_log import round_metrics, trim_metrics
from selfplay.loop.stages.pairing import build_pairs, dataset_pairs, no_pairs, solved_share
from selfplay.loop.stages.prompts import sample_prompts
from selfplay.loop.stages.reference import reference_logps
from selfplay.loop.stages.training import rejected_drift, rounds_before, train
from selfplay.loop.stages.unchanged import export_unchanged, keep_reference, sync_unchanged
from selfplay.loop.stages.weights import export, sync

__all__ = [
    "EVERY_SAMPLE", "Iteration", "brief", "build_pairs", "dataset_pairs", "eval_due", "evaluate", "evaluate_policy",
    "export", "export_unchanged", "generate", "initial_policy", "iteration", "judge", "keep_reference", "no_pairs",
    "policy_before", "prepare", "reference_logps", "rejected_drift", "room_beside_generation", "round_metrics",
    "rounds_before", "sample_prompts", "scored_by_shard", "shard_groups", "solved_share", "sync", "sync_unchanged",
    "train", "trim_metrics",
]
