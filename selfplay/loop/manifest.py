"""The run's manifest (``RUN_DIR/manifest.json``) as typed records: the stage names, one record per stage,
one per iteration, and the manifest that holds them. Read and written here only.

Choices:

* **The stored shape is the one older versions wrote**: the same keys, nested the same way, a key left out
  where nothing set it (``model_dump(exclude_unset=True)``). A run directory written before these models
  existed opens, resumes and shows in ``status``, ``report`` and ``compare`` as it did.
* **Tolerant reading**: every field has a default and every model keeps keys it does not know
  (``extra="allow"``), so an older manifest (no ``cores``, no ``initial_policy``, a stage record without
  ``steps``) and a newer one (a key a later version adds) both load. A value of the wrong type (``steps:
  "many"``) is an error naming the file and the field.
* **What one stage tells a later one is a typed field** of its record (:class:`PairsRecord` ``no_pairs``
  and ``no_pair_all_correct``, :class:`TrainRecord` ``steps`` and ``rejected_drift``), not a loose key.
  A record also keeps the stage's other figures (judge statistics, sync reports) as extra keys, shown by
  ``status`` and logged by the trackers as they are.
"""

from __future__ import annotations

import enum
import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from selfplay.atomic import write_file
from selfplay.loop import faults

MANIFEST = "manifest.json"


class Stage(enum.StrEnum):
    """The stages of a run, by the names the manifest, the log, status and the fault harness use."""

    PREPARE = "prepare"
    GENERATE = "generate"
    JUDGE = "judge"
    PAIRS = "pairs"
    REFERENCE = "reference"
    TRAIN = "train"
    EXPORT = "export"
    SYNC = "sync"
    EVALUATE = "evaluate"


# The stages of one iteration, in the order they run (prepare runs once, before the first iteration).
STAGES: tuple[Stage, ...] = tuple(s for s in Stage if s is not Stage.PREPARE)


class ManifestError(RuntimeError):
    """``manifest.json`` cannot be read: not JSON, or a field of the wrong type (the message names which)."""


class Record(BaseModel):
    """What a stage records: its wall time, whether it was skipped, and any figures it reports."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True, validate_assignment=True)

    seconds: float = 0.0
    """Wall time of the stage in seconds (of the attempt that finished it)."""
    skipped: str | None = None
    """Why the stage did no work (offline pairs, no pairs, a reference-free loss, ``evaluation.every``)."""

    def as_dict(self) -> dict[str, Any]:
        """The record as stored: the keys that were set, extra figures included."""
        return self.model_dump(mode="json", exclude_unset=True)


class GenerateRecord(Record):
    prompts: int | None = None
    """Training prompts sampled this iteration."""
    samples: int | None = None
    """Completions generated (prompts x ``generation.n``)."""
    tokens: int | None = None
    """Completion tokens generated."""
    tokens_per_s: float | None = None
    """Completion tokens per second of the generation call."""


class JudgeRecord(Record):
    """The judge's statistics (mean score, failures, ...) are kept as extra keys, as the judge reports them."""


class PairsRecord(Record):
    pairs: int | None = None
    """Preference pairs built (0: the iteration keeps its policy unchanged)."""
    prompts: int | None = None
    """Prompts the pairs were built from."""
    no_pairs: bool = False
    """True when no pair was built: the reference, train, export and sync stages keep the policy as it is."""
    no_pair_all_correct: int = 0
    """Prompts whose samples were all correct (the share of prompts solved; ``stop_when_solved`` reads it)."""
    hint: str | None = None
    """Why no pair was built and what to change, when none was."""


class ReferenceRecord(Record):
    reference: str | None = None
    """Which policy scored the reference log-probs (``train.reference``)."""
    pairs: int | None = None
    """Pairs scored."""


class TrainRecord(Record):
    steps: int = 0
    """Optimizer steps of the round (0: no round ran); the next round's step numbers continue from the sum."""
    resumed_at_step: int | None = None
    """The step an interrupted round continued after, from its last checkpoint."""
    loss: float | None = None
    """The round's last logged loss."""
    reward_accuracy: float | None = None
    """Mean reward accuracy over the round's logged steps."""
    reward_margin: float | None = None
    """Mean reward margin over the round's logged steps."""
    rejected_drift: float | None = None
    """Mean log pi_ref(y) - log pi_new(y) over sampled rejected responses (evaluate writes it into eval.json)."""
    policy: str | None = None
    """The policy directory the round's weights were saved to."""


class ExportRecord(Record):
    policy: str | None = None
    """The iteration's policy directory."""
    unchanged_from: str | None = None
    """The policy it was linked from, when the iteration kept its policy unchanged."""


class SyncRecord(Record):
    version: int | None = None
    """The policy version the generators hold after the stage."""
    method: str | None = None
    """How the weights got there (the sync's report adds its own figures as extra keys)."""


class EvaluateRecord(Record):
    """The numeric figures of the iteration's ``eval.json`` (accuracy, win rate, ...), as extra keys."""


class PrepareRecord(Record):
    warmstart: dict[str, Any] | None = None
    """The SFT warm start's summary (``steps`` among it), when the recipe has one."""


RECORDS: dict[str, type[Record]] = {
    Stage.PREPARE: PrepareRecord, Stage.GENERATE: GenerateRecord, Stage.JUDGE: JudgeRecord,
    Stage.PAIRS: PairsRecord, Stage.REFERENCE: ReferenceRecord, Stage.TRAIN: TrainRecord,
    Stage.EXPORT: ExportRecord, Stage.SYNC: SyncRecord, Stage.EVALUATE: EvaluateRecord,
}


def record_for(stage: str, data: Record | dict[str, Any] | None) -> Record:
    """``data`` as ``stage``'s record type (a record of the right type is returned as it is)."""
    kind = RECORDS.get(stage, Record)
    if isinstance(data, kind):
        return data
    return kind.model_validate(data.as_dict() if isinstance(data, Record) else data or {})


class IterationRecord(BaseModel):
    """One iteration: the records of its finished stages (in the order they finished) and whether it is complete."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True, validate_assignment=True)

    stages: dict[str, SerializeAsAny[Record]] = Field(default_factory=dict)
    """Each finished stage's record, by stage name; a stage not listed is not done."""
    complete: bool = False
    """True once every stage is done and the iteration is committed."""
    policy_version: int | None = None
    """The policy version the iteration produced (k + 1), once complete."""
    wall_seconds: float | None = None
    """Wall time of the iteration, from its start to its last stage (of the attempt that completed it)."""

    @field_validator("stages", mode="before")
    @classmethod
    def _typed(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for name, data in value.items():
            try:
                out[name] = record_for(name, data)
            except ValidationError as exc:  # said with the stage's name, which the record's own error lacks
                first = exc.errors()[0]
                raise ValueError(f"{'.'.join(map(str, (name, *first['loc'])))}: {first['msg']}") from None
        return out


class Failure(BaseModel):
    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    iteration: int | None = None
    """The iteration that failed (None: the prepare stage)."""
    stage: str | None = None
    """The stage that failed."""
    error: str | None = None
    """The error, its last 2000 characters."""
    at: str | None = None
    """When, as local time with its offset."""


class StoppedEarly(BaseModel):
    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    after_iteration: int
    """The last iteration that ran."""
    solved_share: float
    """The share of its training prompts it solved."""
    threshold: float
    """``stop_when_solved`` at the time."""


class Manifest(BaseModel):
    """``RUN_DIR/manifest.json``: the recipe, what is done, and what happened to the run."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True, validate_assignment=True)

    format: int = 1
    """The manifest's format version."""
    created: str | None = None
    """When the run directory was created, as local time with its offset."""
    recipe: dict[str, Any] = Field(default_factory=dict)
    """The resolved recipe the run uses (updated when a resume accepts a changed one)."""
    versions: dict[str, str] = Field(default_factory=dict)
    """Package versions at creation."""
    prepared: bool = False
    """True once the starting policy is built, warm-started and evaluated."""
    prepare: PrepareRecord | None = None
    """The prepare stage's record."""
    initial_policy: str | None = None
    """The starting policy's directory (``initial/policy`` or the recipe's ``policy.path``)."""
    iterations: dict[str, IterationRecord] = Field(default_factory=dict)
    """Each started iteration, by its number as a string."""
    cores: dict[str, Any] | None = None
    """What ``auto`` replicas and threads became on the machine of the latest start."""
    inputs: dict[str, Any] | None = None
    """SHA-256 pins of the inputs outside the run directory; a resume refuses a changed one."""
    recipe_changes: list[dict[str, Any]] | None = None
    """Recipe changes a resume accepted, and the stage each iteration was redone from."""
    takeovers: list[dict[str, Any]] | None = None
    """Take-overs of a dead driver's run."""
    failed: Failure | None = None
    """The last failure (cleared when the next run starts)."""
    stopped_early: StoppedEarly | None = None
    """Set when ``stop_when_solved`` ended the run early."""

    @classmethod
    def new(cls, recipe: dict[str, Any], versions: dict[str, str]) -> Manifest:
        return cls(format=1, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), recipe=recipe, versions=versions,
                   prepared=False, iterations={})

    @classmethod
    def load(cls, root: Path) -> Manifest:
        """The manifest of run directory ``root``; :class:`ManifestError` names the file and field if bad."""
        path = manifest_path(root)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path} is not valid JSON ({exc}): not written by selfplay") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path} is not a JSON object: not written by selfplay")
        try:
            manifest = cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            raise ManifestError(f"{path}: {problems}") from None
        manifest.iterations = manifest.iterations  # written back even where an old manifest had none
        return manifest

    def save(self, root: Path) -> Path:
        """Written atomically (a temporary file renamed into place), so a crash leaves the old or the new."""
        path = manifest_path(root)
        text = json.dumps(self.model_dump(mode="json", exclude_unset=True), indent=2, default=str) + "\n"

        def write(tmp: Path) -> None:
            tmp.write_text(text)
            faults.write_point(path)  # crash tests (``write@k:n``): killed before the rename

        return write_file(path, write)

    def unset(self, name: str) -> None:
        """Drop field ``name`` from the stored manifest (as if never set), e.g. a cleared failure."""
        setattr(self, name, None)
        self.model_fields_set.discard(name)

    def iteration(self, k: int) -> IterationRecord | None:
        return self.iterations.get(str(k))

    def stage(self, k: int, stage: str) -> Record | None:
        """Iteration ``k``'s record of ``stage``, if that stage is done."""
        entry = self.iterations.get(str(k))
        return entry.stages.get(stage) if entry is not None else None


def manifest_path(root: Path) -> Path:
    return Path(root) / MANIFEST
