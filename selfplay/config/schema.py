"""The one typed schema for a whole run, validated when a recipe is loaded.

Every section is a pydantic model that forbids unknown keys, so a typo in a recipe is an error that
names the field instead of a silently ignored setting. Field docstrings are the reference documentation
(``selfplay schema`` prints them). Backends that differ in their parameters (task, judge) are
discriminated unions on ``type``. Cross-field rules live in one ``model_validator`` per section.
Numbers are strict where YAML is loose: ``.inf`` / ``.nan`` are refused everywhere (a non-finite
learning rate would train to NaN weights), and a boolean is not a number (``iterations: true`` is not 1).
"""

from __future__ import annotations

import importlib.util
import math
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from selfplay.losses import KTO_PARAMS, LOSS_PARAMS, TDPO_PARAMS, validate_loss_params

PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _numeric(annotation: Any) -> bool:
    """True for int/float fields (also optional ones); False for bool and Literal fields."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) is Literal:  # Literal[0, 1, 2, 3] would take True as 1
        return all(isinstance(a, int) and not isinstance(a, bool) for a in typing.get_args(annotation))
    args = typing.get_args(annotation)
    return bool(args) and bool not in args and any(_numeric(a) for a in args if a is not type(None))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and _numeric(field.annotation):
                    raise ValueError(f"{name}: must be a number, not a boolean (got {value})")
        return data


# --------------------------------------------------------------------------------------------- policy
class WarmStartConfig(Section):
    """SFT on the task's reference answers before self-play (`selfplay prepare`)."""

    examples: PositiveInt = 2000
    """Number of training examples (prompt + reference answer) used for the warm start."""
    epochs: PositiveInt = 1
    """Passes over those examples."""
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    """Peak learning rate of the warm start."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up (the warm start's own; the `train` section's applies to preference rounds)."""
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Fraction of the warm start's steps spent warming up linearly."""
    micro_batch_size: PositiveInt = 32
    """Examples per learner per optimizer step (global batch = this x learners)."""
    length_grouping: Literal["sorted", "megabatch", "random"] = "random"
    """Batch grouping of the warm start, its own setting (not `train.length_grouping`): `random` by default,
    because length-sorted SFT batches hold one kind of example where length tracks content (measured on a
    small task: 0.776 held-out accuracy after the warm start with `random`, 0.096 with `megabatch`)."""


class PolicyConfig(Section):
    """The policy the run starts from: a local Hugging Face directory, or a tiny preset built offline."""

    path: str | None = None
    """Local Hugging Face model directory (config, weights, tokenizer). Nothing is downloaded."""
    preset: Literal["nano", "tiny", "small", "medium", "large"] | None = None
    """Build a randomly initialised Llama of this size offline instead of loading `path`."""
    tokenizer: Literal["char", "bpe"] = "char"
    """Tokenizer built for a `preset` policy: a fixed character vocabulary or byte-level BPE."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights dtype for generation and export."""
    warmstart: WarmStartConfig | None = None
    """Optional SFT warm start on reference answers before iteration 0."""

    @model_validator(mode="after")
    def _one_source(self) -> PolicyConfig:
        if (self.path is None) == (self.preset is None):
            raise ValueError("set exactly one of `path` (a local HF directory) or `preset` (a tiny model)")
        return self


# ----------------------------------------------------------------------------------------------- task
class ArithmeticTaskConfig(Section):
    type: Literal["arithmetic"]
    level: Annotated[int, Field(ge=1, le=6)] = 1
    """Difficulty: 1 = 1-2 digit +, 2 = 2-digit +/-, 3 = 3-digit +/-, 4 = adds 2x1-digit *, 5, 6 harder."""
    partial_credit: bool = False
    """Give partial credit per correct digit instead of 0/1."""
    chat: bool = False
    """Give prompts as chat messages instead of plain text."""


class SortingTaskConfig(Section):
    type: Literal["sorting"]
    min_len: PositiveInt = 3
    """Fewest numbers in a list."""
    max_len: PositiveInt = 6
    """Most numbers in a list."""
    max_value: PositiveInt = 99
    """Largest number that appears."""
    descending: bool = False
    """Sort in descending order."""
    partial_credit: bool = False
    """Score the fraction of positions right instead of 0/1."""
    chat: bool = False
    """Give prompts as chat messages instead of plain text."""

    @model_validator(mode="after")
    def _lengths(self) -> SortingTaskConfig:
        if self.min_len > self.max_len:
            raise ValueError(f"min_len: {self.min_len} is larger than max_len {self.max_len}")
        return self


class WordProblemTaskConfig(Section):
    """Templated grade-school word problems (55-120 words of prose) with an integer answer, graded on the
    last number of the response (GSM8K style: commas, units and a `####` marker tolerated)."""

    type: Literal["word_problems"]
    chat: bool = True
    """Give prompts as chat messages instead of plain text."""


EXTRACTIONS = Literal["auto", "answer_tag", "boxed", "marker", "last_number", "none"]


def _need_tasks_extra(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} needs the `tasks` extra ({module} is not installed): pip install -e '.[tasks]'")


def _check_markers(value: list[str]) -> list[str]:
    if not value or not all(m.strip() for m in value):
        raise ValueError("give at least one marker, and no empty one (e.g. [\"####\", \"The answer is\"])")
    return value


class GraderConfig(Section):
    """Turns a dataset's reference column into a verifier (`judge: {type: verifier}`); `grader: math` is
    short for `grader: {type: math}`. The answer is extracted from the response and the reference alike."""

    type: Literal["exact", "numeric", "regex", "math"]
    """`exact`: normalised string match; `numeric`: the answers read as numbers (`1/2` = `0.5`, `1,234` = 1234)
    match within `tolerance`; `regex`: `pattern` extracts, then exact; `math`: HF math-verify (LaTeX,
    `\\boxed{}`, fractions; the `tasks` extra)."""
    extract: EXTRACTIONS = "auto"
    """Where the answer is: `answer_tag` (`<answer>..</answer>`), `boxed` (last `\\boxed{}`), `marker` (after
    the last of `markers`), `last_number`, `none` (the whole text), or `auto`: the first of tags, boxed and
    marker that is there, else the whole text. A response without an answer scores 0."""
    markers: list[str] = ["####", "The answer is", "Answer:"]
    """Markers for `extract: marker`/`auto` (case-insensitive; the rest of the line after the last one)."""
    reference_extract: Literal["same", "whole"] = "same"
    """`same`: the reference's answer is extracted like the response's (GSM8K's `#### 42`); `whole`: the
    reference is the bare answer. A reference the grader cannot read fails at load, naming file and row."""
    pattern: str | None = None
    """`regex` only: the extraction pattern (last match; group `answer`, else group 1, else the match)."""
    tolerance: Annotated[float, Field(ge=0.0)] = 1e-6
    """`numeric` only: |answer - reference| <= tolerance x max(1, |reference|)."""
    case_sensitive: bool = False
    """`exact` and `regex`: compare case-sensitively."""
    timeout_s: Annotated[float, Field(gt=0.0)] = 5.0
    """`math` only: seconds math-verify may spend on one answer; past it the answer scores 0 and is counted."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data

    @field_validator("markers")
    @classmethod
    def _markers(cls, value: list[str]) -> list[str]:
        return _check_markers(value)

    @model_validator(mode="after")
    def _fields_of_type(self) -> GraderConfig:
        if (self.type == "regex") != (self.pattern is not None):
            raise ValueError("pattern: needed by (and only by) the `regex` grader")
        if self.pattern is not None:
            import re

            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern: {self.pattern!r} is not a regular expression: {exc}") from None
        if self.type == "math":
            _need_tasks_extra("math_verify", "grader `math`")
        return self

    def params(self) -> dict[str, Any]:
        """Keyword arguments of ``selfplay.tasks.graders.build_grader`` for this grader."""
        out: dict[str, Any] = {"extract": self.extract, "markers": list(self.markers),
                               "reference_extract": self.reference_extract}
        if self.type == "numeric":
            out["tolerance"] = self.tolerance
        if self.type in ("exact", "regex"):
            out["case_sensitive"] = self.case_sensitive
        if self.type == "regex":
            out["pattern"] = self.pattern
            out.pop("extract")
        if self.type == "math":
            out["timeout_s"] = self.timeout_s
        return out


class DatasetTaskConfig(Section):
    type: Literal["dataset"]
    path: str
    """A local parquet or jsonl file, or a directory saved with `datasets.save_to_disk`."""
    prompt_column: str = "prompt"
    """Column holding the prompt: plain text or a list of chat messages."""
    reference_column: str | None = None
    """Optional column with a reference answer (needed by the `sft` judge and the warm start)."""
    id_column: str | None = None
    """Optional column with stable prompt ids (default: a hash of the prompt)."""
    eval_path: str | None = None
    """Separate held-out file; when absent, `eval_fraction` of `path` is held out (seeded)."""
    eval_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    """Fraction of `path` held out for evaluation when `eval_path` is not given."""
    grader: GraderConfig | None = None
    """Make `reference_column` a verifier (`exact`, `numeric`, `regex`, `math`), so `judge: {type: verifier}`
    grades samples with no Python; every row then needs a reference the grader can read."""


class ReasoningGymTaskConfig(Section):
    """Procedural problems from reasoning-gym (`reasoning_gym.create_dataset`), scored by the dataset's own
    `score_answer` (partial credit kept). Needs the `tasks` extra."""

    type: Literal["reasoning_gym"]
    name: Annotated[str, Field(min_length=1)]
    """The reasoning-gym dataset, e.g. `chain_sum`, `spell_backward`, `count_bits`."""
    config: dict[str, Any] = {}
    """Its configuration (`reasoning_gym.create_dataset(name, **config)`); `seed` and `size` are the task's."""
    prompt_template: str | None = None
    """Replaces reasoning-gym's instructions: a `str.format` template over `{question}` and
    `{metadata[...]}`, e.g. `"{metadata[expression]} ="` for `chain_sum`."""
    chat: bool = False
    """Give prompts as chat messages instead of plain text."""
    extract: EXTRACTIONS = "auto"
    """Where the answer is in a response, as for a dataset `grader` (default `auto`: tags, boxed, marker, else
    the whole text); `score_answer` then scores that answer."""
    markers: list[str] = ["####", "The answer is", "Answer:"]
    """Markers for `extract: marker`/`auto`."""

    @field_validator("markers")
    @classmethod
    def _markers(cls, value: list[str]) -> list[str]:
        return _check_markers(value)

    @model_validator(mode="after")
    def _installed(self) -> ReasoningGymTaskConfig:
        _need_tasks_extra("reasoning_gym", "task `reasoning_gym`")
        for reserved in ("seed", "size"):
            if reserved in self.config:
                raise ValueError(f"config.{reserved}: set by the task (the run's seed, its train and eval sizes)")
        return self


class PairsTaskConfig(Section):
    """Offline preference data: pairs come from a file instead of generate -> judge (offline DPO)."""

    type: Literal["pairs"]
    path: str
    """A local parquet or jsonl file (or `datasets.save_to_disk` directory) of preference pairs."""
    prompt_column: str = "prompt"
    """Column holding the prompt: plain text or a list of chat messages."""
    chosen_column: str = "chosen"
    """Column holding the preferred response."""
    rejected_column: str = "rejected"
    """Column holding the dispreferred response."""
    eval_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Fraction of prompts held out (seeded) for evaluation."""
    chunks: PositiveInt | None = None
    """sDPO (Kim et al. 2024): split the training pairs into this many chunks of near-equal size, in file order
    (order the file easier-first for the paper's curriculum), and train iteration k on chunk k only
    (use with `train.reference: previous` and `iterations` = `chunks`).
    Default: every iteration trains on all the pairs."""


class SessionsTaskConfig(Section):
    """SDPO's self-play (Kong et al. 2025, arXiv:2501.01821): negative sessions from a file; each iteration the
    policy plays new continuations of them from their erroneous assistant turn (the user turns inside the
    segment replayed from the file), the judge picks the better session, and the pairs train segment-level
    DPO. Needs `train.loss.segment_turns` (the segment's assistant turns) and a judge that is not `verifier`
    or `sft`. The layout is in docs/data.md."""

    type: Literal["sessions"]
    path: str
    """A local jsonl or parquet file (or `datasets.save_to_disk` directory) of negative sessions."""
    prompt_column: str = "prompt"
    """Column holding each session's history before its erroneous turn: chat messages ending with a user turn."""
    rejected_column: str = "rejected"
    """Column holding the negative continuation: the erroneous assistant turn, then user and assistant turns in
    turn; at least `train.loss.segment_turns` assistant turns. Its user turns are replayed to the policy."""
    eval_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    """Fraction of the distinct histories held out (seeded); the evaluation answers them."""


class PythonTaskConfig(Section):
    type: Literal["python"]
    target: Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")]
    """`module:attr` importable from the working directory; a Task class or factory."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments passed to `target`."""


TaskConfig = Annotated[
    ArithmeticTaskConfig | SortingTaskConfig | WordProblemTaskConfig | DatasetTaskConfig | PairsTaskConfig
    | SessionsTaskConfig | ReasoningGymTaskConfig | PythonTaskConfig,
    Field(discriminator="type"),
]


# ----------------------------------------------------------------------------------------- generation
class GenerationConfig(Section):
    """Sampling from the current policy."""

    backend: Literal["vllm", "hf"] = "vllm"
    """`vllm` engines in Ray actors; `hf` (transformers `generate`) where vLLM is not installed."""
    prompts_per_iteration: PositiveInt = 256
    """Training prompts sampled (without replacement across iterations where possible) per iteration."""
    n: PositiveInt = 4
    """Samples per prompt."""
    temperature: Annotated[float, Field(ge=0.0)] = 1.0
    """Sampling temperature (0 = greedy)."""
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Nucleus sampling mass."""
    top_k: Annotated[int, Field(ge=-1)] = -1
    """Top-k sampling; -1 disables it."""
    max_tokens: PositiveInt = 64
    """Most new tokens per sample."""
    stop: list[str] = []
    """Stop strings (the EOS token always stops)."""
    logprobs: bool = False
    """Keep per-token sampling log-probs in generations.parquet."""
    replicas: PositiveInt | Literal["auto"] = "auto"
    """Generator actors (each owns one engine). `auto`: on one machine without GPUs, one per core (each
    with one thread, or the cores `resources.generator_threads` leaves); on a Ray cluster or with GPUs, 1."""
    tensor_parallel_size: PositiveInt = 1
    """GPUs per generator engine (GPU clusters only)."""
    max_model_len: PositiveInt = 512
    """Context length of the generator engine (prompt + completion)."""
    shard_size: PositiveInt = 64
    """Prompts per generations shard; a crash loses at most the shards in flight."""
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = []
    """Token ids that end a sample besides the tokenizer's EOS (Llama-3 chat: `[128009]`, `<|eot_id|>`)."""
    prompt_template: str | None = None
    """Generation-only prompt format with `{prompt}` (the prompt's text), e.g. SPIN's
    `"### Instruction: {prompt}\n\n### Response: "`; the rendered string is encoded as plain text for
    sampling, while training (and evaluation) keep the task's prompt and the chat template."""
    prompt_source: Literal["fresh", "fixed", "files"] = "fresh"
    """Where each iteration's prompts come from: `fresh` = the next slice of one seeded permutation
    (disjoint across iterations); `fixed` = the same `prompts_per_iteration` prompts every iteration
    (SPIN regenerates one fixed set); `files` = iteration k reads `prompt_files[k]` (RLHFlow, SPPO)."""
    prompt_files: list[str] = []
    """With `prompt_source: files`, one local parquet/jsonl per iteration (same prompt column as the task)."""
    long_prompts: Literal["error", "drop", "truncate"] = "error"
    """A prompt longer than `max_model_len - max_tokens` tokens: stop at load naming its row (`error`),
    leave it out with a warning that counts them (`drop`), or keep its last tokens (`truncate`)."""

    @model_validator(mode="after")
    def _top_k(self) -> GenerationConfig:
        if self.top_k == 0:
            raise ValueError("top_k: 0 is not allowed; use -1 to disable top-k or a positive k")
        if self.prompt_template is not None and "{prompt}" not in self.prompt_template:
            raise ValueError("prompt_template: must contain {prompt}")
        if (self.prompt_source == "files") != bool(self.prompt_files):
            raise ValueError("prompt_files: give one file per iteration exactly when prompt_source is `files`")
        if self.max_model_len <= self.max_tokens:
            raise ValueError(f"max_model_len: {self.max_model_len} leaves no room for a prompt: it must be "
                             f"larger than generation.max_tokens ({self.max_tokens}), which it includes")
        return self

    @property
    def max_prompt_tokens(self) -> int:
        """Longest prompt (in tokens) that still leaves room for `max_tokens` new ones."""
        return self.max_model_len - self.max_tokens


# ---------------------------------------------------------------------------------------------- judge
class VerifierJudgeConfig(Section):
    type: Literal["verifier"]
    """Score each sample with the task's rule (exact answer or graded)."""


class SFTJudgeConfig(Section):
    type: Literal["sft"]
    """SPIN: the reference answer is chosen, each policy sample that differs from it is rejected."""


class RewardModelJudgeConfig(Section):
    type: Literal["reward_model"]
    path: str
    """Local Hugging Face sequence-classification model scoring (prompt, response)."""
    batch_size: PositiveInt = 16
    """Responses scored per forward pass."""
    max_length: PositiveInt = 1024
    """Truncate (prompt + response) to this many tokens."""


class PairwiseJudgeConfig(Section):
    type: Literal["pairwise"]
    path: str
    """Local model scoring (prompt, a, b) as P(a better than b), e.g. a PairRM-style ranker."""
    batch_size: PositiveInt = 16
    """Comparisons per forward pass."""
    max_length: PositiveInt = 1024
    """Most tokens of one rendered (prompt, a, b) triple; a longer triple is never truncated (see overflow)."""
    overflow: Literal["error", "skip"] = "error"
    """A triple over `max_length`: fail the judge stage naming the lengths, or leave that comparison
    undecided and count it (`overlong` in the judge stage's stats)."""
    include_self: bool = False
    """Average each sample's win rate over all n samples including itself at 1/2, as SPPO does."""


class LLMJudgeConfig(Section):
    type: Literal["llm_judge"]
    path: str
    """Local Hugging Face chat model used as the judge (served by a vLLM generator)."""
    template: str | None = None
    """Judge prompt with {prompt}, {a}, {b}; the default asks for a verdict `A` or `B`."""
    both_orders: bool = True
    """Judge every pair in both orders to cancel position bias."""
    max_tokens: PositiveInt = 16
    """Tokens the judge may write before its verdict is parsed."""


class PythonJudgeConfig(Section):
    type: Literal["python"]
    target: Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")]
    """`module:attr` from the working directory: a callable or class returning scores."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments for a class `target`."""


JudgeConfig = Annotated[
    VerifierJudgeConfig
    | SFTJudgeConfig
    | RewardModelJudgeConfig
    | PairwiseJudgeConfig
    | LLMJudgeConfig
    | PythonJudgeConfig,
    Field(discriminator="type"),
]


# -------------------------------------------------------------------------------------------- pairing
class PairingConfig(Section):
    """How judged samples become (chosen, rejected) pairs."""

    strategy: Literal["best_worst", "best_random", "all_pairs", "reference", "best"] | None = None
    """Default: `reference` with the `sft` judge (SPIN), otherwise `best_worst`. `best` is rejection-sampling
    fine-tuning (RAFT / ReST / STaR): each prompt's best sample alone, if it scores at least `min_score`,
    becomes an SFT target; it needs `train.loss.type: sft`."""
    min_margin: Annotated[float, Field(ge=0.0)] = 0.0
    """Drop pairs whose score margin is below this."""
    drop_ties: bool = True
    """Drop pairs with equal scores."""
    length_penalty: Annotated[float, Field(ge=0.0)] = 0.0
    """Subtract this times the response length (in tokens) from scores before pairing."""
    max_pairs_per_prompt: PositiveInt | None = None
    """Cap on pairs per prompt (`all_pairs` and `reference` can make many)."""
    mix_previous: Probability = 0.0
    """Fraction of the previous iteration's own new pairs (not what was mixed into it) added to this
    round: SPIN trains iteration t on t-1's and t's data, `1.0`."""
    min_score: float | None = 1.0
    """Strategy `best` only: the lowest raw judge score a sample needs to be trained on (1.0 = a verifier's
    correct answer); null keeps every prompt's best sample (RAFT's top-1 under a reward model)."""


# ---------------------------------------------------------------------------------------------- train
ALL_LOSSES = tuple(sorted([*LOSS_PARAMS, "kto", "tdpo", "sft"]))

LOSS_ALIASES: dict[str, str] = {"dpo": "sigmoid", "cdpo": "sigmoid", "rdpo": "robust"}
"""Common names of losses that are another loss type here: DPO and conservative DPO (cDPO: DPO with
`label_smoothing`) are `sigmoid`, robust DPO (rDPO) is `robust`. A recipe may use either name;
`validate` prints the canonical one."""

PARAM_ALIASES: dict[str, dict[str, str]] = {"exo_pair": {"label_smoothing": "epsilon"},
                                            "discopop": {"discopop_tau": "tau"}}
"""TRL's names for a loss's parameters, per canonical loss type, so that a TRL config carries over."""


def loss_param_defaults(loss_type: str) -> dict[str, Any]:
    if loss_type == "sft":
        return {}
    if loss_type == "kto":
        return dict(KTO_PARAMS)
    if loss_type == "tdpo":
        return dict(TDPO_PARAMS)
    return dict(LOSS_PARAMS[loss_type])


class LossConfig(Section):
    type: str = "sigmoid"
    """A preference loss (`sigmoid`, `ipo`, `simpo`, ...), `kto` or `tdpo` (see selfplay/losses), or `sft`:
    mean token NLL of the chosen responses alone (no reference; with `pairing.strategy: best` this is
    rejection-sampling fine-tuning)."""
    beta: Annotated[float, Field(gt=0.0)] = 0.1
    """Strength of the implicit KL constraint (temperature of the implicit reward)."""
    params: dict[str, Any] = {}
    """Loss-specific parameters, e.g. `{label_smoothing: 0.1}` for cDPO; unknown names are errors."""
    nll_weight: Annotated[float, Field(ge=0.0)] = 0.0
    """Adds this times the chosen response's length-normalised NLL to every pair's loss: Iterative RPO
    (Pang et al. 2024, "Iterative Reasoning Preference Optimization"), TRL's `rpo_alpha`. It keeps the
    chosen log-probs from being pushed down with the rejected ones (DPO's known failure on verified
    reasoning data). 0 = the plain loss. Pair losses and TDPO only."""
    segment_turns: PositiveInt | None = None
    """SDPO, segment-level DPO on multi-turn pairs (Kong et al. 2025, "SDPO: Segment-Level Direct Preference
    Optimization for Social Agents", arXiv:2501.01821): on each side, score only the first K assistant turns
    from the first turn where chosen and rejected differ; the user turns inside the segment are context and
    the turns after it are cut. Every pair must hold K assistant turns on both sides. Unset: every assistant
    turn of each side is scored (session-level DPO on multi-turn pairs; a single-turn pair as always). Pair
    losses and TDPO only. Not sDPO (stepwise DPO, `task.chunks`)."""

    @field_validator("type", mode="before")
    @classmethod
    def _canonical_type(cls, value: Any) -> Any:
        """`dpo`, `cdpo`, `rdpo` become their canonical loss types (also when a field is assigned)."""
        return LOSS_ALIASES.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _canonical(cls, data: Any) -> Any:
        """TRL's parameter names become the canonical ones."""
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            return data
        data = dict(data)
        data["type"] = loss_type = LOSS_ALIASES.get(data["type"], data["type"])
        renames = PARAM_ALIASES.get(loss_type, {})
        params = data.get("params")
        if renames and isinstance(params, dict):
            both = sorted(alias for alias, name in renames.items() if alias in params and name in params)
            if both:
                raise ValueError(f"params: {both} and {[renames[a] for a in both]} are the same setting; give one")
            data["params"] = {renames.get(k, k): v for k, v in params.items()}
        return data

    @model_validator(mode="after")
    def _known(self) -> LossConfig:
        if self.type not in ALL_LOSSES:
            raise ValueError(f"type: unknown loss {self.type!r}; allowed: {', '.join(ALL_LOSSES)}")
        allowed = loss_param_defaults(self.type)
        bad = sorted(k for k, v in self.params.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            raise ValueError(f"params: {bad} must be finite numbers (got {[self.params[k] for k in bad]})")
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            names = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"params: {unknown} not accepted by loss {self.type!r}; allowed: {names}")
        if self.segment_turns is not None and self.type in ("kto", "sft"):
            raise ValueError(f"segment_turns: SDPO's segment is a pair loss setting; loss {self.type!r} has no "
                             "chosen/rejected pair to compare")
        if self.nll_weight and self.type == "kto":
            raise ValueError("nll_weight: KTO has no chosen response per row; use it with a pair loss or tdpo")
        if self.type == "odpo" and "offset" in self.params:
            raise ValueError("params: odpo's `offset` comes from the judge scores of each pair (the pairs table's "
                             "`offset` column), not from the recipe; scale it with `alpha`")
        if self.type in LOSS_PARAMS:  # ranges (e.g. robust's label_smoothing < 0.5) are the loss library's
            try:
                validate_loss_params(self.type, self.params)
            except ValueError as exc:
                raise ValueError(f"params: {exc}") from None
        return self

    def resolved_params(self) -> dict[str, Any]:
        return {**loss_param_defaults(self.type), **self.params}


class IterationTrainOverrides(Section):
    """Training values for one iteration that differ from the `train` section's."""

    learning_rate: Annotated[float, Field(gt=0.0)] | None = None
    """Peak learning rate of this iteration's round."""
    loss_beta: Annotated[float, Field(gt=0.0)] | None = None
    """`train.loss.beta` of this iteration's round."""
    epochs: PositiveInt | None = None
    """Passes over this iteration's pairs."""


LORA_DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Section):
    """Train low-rank adapters (LoRA, through PEFT) instead of all weights; `r: 0` is full fine-tuning."""

    r: Annotated[int, Field(ge=0)] = 0
    """Adapter rank; 0 (the default) trains every weight, as without this section."""
    alpha: Annotated[float, Field(gt=0.0)] = 16.0
    """Scale of the adapter update (the update is multiplied by alpha / r)."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Dropout on the adapter's input during training."""
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_DEFAULT_TARGETS))
    """Names (last path component) of the linear layers that get adapters; default: the attention and
    MLP projections of Llama-style models. Checked against the model's own module names by the learner."""

    @model_validator(mode="after")
    def _targets(self) -> LoraConfig:
        if self.r > 0 and not self.target_modules:
            raise ValueError("target_modules: name at least one linear layer for the adapters")
        dupes = sorted({m for m in self.target_modules if self.target_modules.count(m) > 1})
        if dupes:
            raise ValueError(f"target_modules: {dupes} listed more than once")
        return self


class TrainConfig(Section):
    """One DPO-family round per iteration on DeepSpeed learners."""

    loss: LossConfig = LossConfig()
    """The preference objective."""
    reference: Literal["initial", "previous"] = "initial"
    """Reference policy: the starting policy, or the previous iteration's (SPIN, iterative DPO)."""
    learning_rate: Annotated[float, Field(gt=0.0)] = 5e-7
    """Peak learning rate."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up."""
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    """Fraction of the round's optimizer steps spent warming up linearly."""
    epochs: PositiveInt = 1
    """Passes over the round's pairs."""
    micro_batch_size: PositiveInt = 8
    """Pairs per learner per forward/backward."""
    gradient_accumulation_steps: PositiveInt = 1
    """Micro-batches per optimizer step (global batch = micro x accumulation x learners)."""
    max_grad_norm: Annotated[float, Field(gt=0.0)] = 1.0
    """Gradient clipping norm."""
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    """AdamW weight decay."""
    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO stage."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision."""
    optimizer_offload: bool = False
    """Keep optimizer state on CPU (ZeRO 1-3)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    disable_dropout: bool = True
    """Turn the policy's dropout off while training (as TRL does), so that at step 0 the policy scores a pair
    exactly as its reference (scored in eval mode) does. `false` keeps the checkpoint's dropout."""
    max_prompt_length: PositiveInt = 256
    """Most prompt tokens kept (left-truncated)."""
    max_completion_length: PositiveInt = 256
    """Most completion tokens kept."""
    truncation: Literal["truncate", "drop"] = "truncate"
    """Over-long pairs are truncated or dropped; the count is reported either way."""
    length_grouping: Literal["sorted", "megabatch", "random"] = "random"
    """Batch grouping of preference rounds: `random` (default, as TRL), globally `sorted` (least padding,
    one length class per batch), or sorted within random windows of 64 micro-batches (`megabatch`, like HF
    group_by_length: less padding, faster on long data). Length-grouped batches hold one kind of example
    where length tracks content, which can stall learning, so grouping is opt-in. The warm start has its own
    `policy.warmstart.length_grouping`."""
    checkpoint_every: Annotated[int, Field(ge=0)] = 0
    """Save a resumable learner checkpoint (weights, optimizer state, data position) every this many
    optimizer steps, so a round interrupted mid-way resumes from the last one instead of its first step.
    0: none. A finished round keeps no checkpoint: its result is the iteration's `policy/` directory."""
    optimizer: Literal["adamw", "rmsprop", "sgd"] = "adamw"
    """torch optimizer: `adamw` (betas 0.9/0.999, eps 1e-8), `rmsprop` (torch defaults: alpha 0.99,
    eps 1e-8; SPIN, SPPO, the DPO authors) or plain `sgd`. `weight_decay` applies to 2-D weights in each."""
    warmup_steps: Annotated[int, Field(ge=0)] | None = None
    """Warm-up length in optimizer steps; when set it replaces `warmup_ratio` (the DPO authors: 150)."""
    max_length: PositiveInt | None = None
    """Most tokens of prompt + longest completion. Over it, the prompt is cut to `max_prompt_length`
    first, then the completions to what is left (the DPO authors' order). Unset: only the two caps."""
    per_iteration: dict[Annotated[int, Field(ge=0)], IterationTrainOverrides] = {}
    """Values that differ by iteration (0-based), e.g. SPIN's `{2: {learning_rate: 1.0e-7},
    3: {learning_rate: 1.0e-7, loss_beta: 5.0}}`; unlisted iterations use the section's values."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapters instead of full fine-tuning (see docs/lora.md); off unless `r` > 0."""

    @model_validator(mode="after")
    def _zero(self) -> TrainConfig:
        if self.optimizer_offload and self.zero_stage == 0:
            raise ValueError("optimizer_offload: needs zero_stage 1, 2 or 3 (got 0)")
        if self.max_length is not None and self.max_length <= self.max_prompt_length:
            raise ValueError(f"max_length: {self.max_length} leaves no room for a completion after "
                             f"max_prompt_length {self.max_prompt_length}")
        if self.lora.r > 0 and self.loss.type == "tdpo":
            raise ValueError("lora: not supported with loss tdpo yet (its frozen reference model is a full copy); "
                             "set lora.r: 0 or use another loss")
        return self

    def for_iteration(self, k: int) -> TrainConfig:
        """This section with iteration ``k``'s overrides applied (itself when there are none)."""
        o = self.per_iteration.get(k)
        if o is None:
            return self
        update: dict[str, Any] = {}
        if o.learning_rate is not None:
            update["learning_rate"] = o.learning_rate
        if o.epochs is not None:
            update["epochs"] = o.epochs
        if o.loss_beta is not None:
            update["loss"] = self.loss.model_copy(update={"beta": o.loss_beta})
        return self.model_copy(update=update)


# ---------------------------------------------------------------------------------- sync, eval, infra
class SyncConfig(Section):
    """Pushing the trained weights into the running generators."""

    method: Literal["object_store", "filesystem", "nccl"] = "object_store"
    """Ray object store (default, CPU and multi-node), a shared directory, or NCCL broadcast (GPUs)."""
    bucket_mb: Annotated[float, Field(gt=0.0)] = 64.0
    """Size of each safetensors bucket streamed to the generators."""
    shared_dir: str | None = None
    """Directory visible to every node, for `filesystem` (default: the run directory)."""
    verify: bool = True
    """After each sync compare generator and learner log-probs on a probe batch; stop on mismatch."""
    probe_tolerance: Annotated[float, Field(gt=0.0)] | None = None
    """Largest allowed |log-prob| difference on the probe batch (default 1e-3 in float32, 2e-2 in bfloat16,
    where vLLM's kernels and the learner's legitimately differ by a few 1e-3)."""
    lora: Literal["auto", "adapter", "merged"] = "auto"
    """With `train.lora`: `adapter` ships only the adapter tensors, which the generators serve through
    vLLM's LoRA support on base weights they load once; `merged` ships the whole merged model every sync.
    `auto`: `adapter` with GPU vLLM generators (`resources.generator_gpus` > 0) and the object_store or
    filesystem method, else `merged`: vLLM's CPU LoRA kernels generate more slowly than the merged model
    does, more than the smaller sync saves (`python -m bench.sync` and `python -m bench.lora` show both).
    When the base is pushed as well is in docs/lora.md."""


class EvalConfig(Section):
    """Held-out evaluation after every `every` iterations (and of the starting policy)."""

    num_prompts: Annotated[int, Field(ge=0)] = 500
    """Held-out prompts; 0 disables evaluation."""
    every: PositiveInt = 1
    """Evaluate every this many iterations."""
    temperature: Annotated[float, Field(ge=0.0)] = 0.0
    """Sampling temperature for evaluation (0 = greedy). Without `k` it is the temperature of the one answer
    per prompt that `accuracy`, `win_rate` and `mean_reward` score; with `k` it is the temperature of the `k`
    samples (it must then be > 0), and that one answer is greedy."""
    k: Annotated[int, Field(ge=2)] | None = None
    """pass@k and maj@k beside greedy accuracy (e.g. 8; needs a task with a verifier): each held-out prompt
    also gets `k` samples at `temperature`, kept in `eval_generations.parquet`. A sample is correct when the
    verifier scores it 1 (partial credit counts as wrong). `pass@k` is the unbiased estimator of Chen et al.
    2021 (with `k` samples: the share of prompts with a correct one), `pass@1` the mean share of correct
    samples, `maj@k` the share of prompts whose most common answer (the task's `extract_answer`, else the
    stripped response) is correct. Unset: off."""
    win_rate: bool = True
    """Win rate against the initial policy under the judge (needs a judge that compares)."""
    drift_samples: Annotated[int, Field(ge=0)] = 32
    """Rejected samples scored again after each round for `rejected_drift` (how far the round pushed
    them down; `selfplay status` shows it). Its cost is a forward over them on the learners, in the
    train stage (`python -m bench.iteration` turns it off to match the script pipeline; docs/benchmarks.md
    has what it cost there). 0 disables it."""

    @model_validator(mode="after")
    def _sampled_k(self) -> EvalConfig:
        if self.k is not None and self.temperature == 0:
            raise ValueError(f"temperature: must be > 0 with evaluation.k = {self.k}: the k samples are drawn at "
                             "it, and 0 (greedy) would give k copies of one answer; e.g. 1.0")
        return self


class ResourcesConfig(Section):
    """Where actors run. The generator count is `generation.replicas`."""

    learners: PositiveInt = 1
    """DeepSpeed ranks (learner actors)."""
    learner_cpus: Annotated[float, Field(gt=0.0)] = 1.0
    """CPUs reserved per learner."""
    learner_gpus: Annotated[float, Field(ge=0.0)] = 0.0
    """GPUs per learner."""
    generator_cpus: Annotated[float, Field(gt=0.0)] = 1.0
    """CPUs reserved per generator."""
    generator_gpus: Annotated[float, Field(ge=0.0)] = 0.0
    """GPUs per generator (times tensor_parallel_size)."""
    placement: Literal["pack", "spread", "strict_pack", "strict_spread"] = "pack"
    """Placement-group strategy for learners and generators: `pack` fills a node first (fewer cross-node
    transfers), `spread` puts actors on different nodes where it can; `strict_*` fail instead of bending."""
    learner_resources: dict[str, Annotated[float, Field(gt=0.0)]] = {}
    """Custom Ray resources every learner bundle needs (node affinity): `{learner_node: 1}` places learners
    only on nodes started with `ray start --resources='{"learner_node": N}'`."""
    generator_resources: dict[str, Annotated[float, Field(gt=0.0)]] = {}
    """Custom Ray resources every generator bundle needs (node affinity for generators)."""
    max_restarts: Annotated[int, Field(ge=0)] = 3
    """How often Ray restarts a dead generator; it reloads the current policy and only its unfinished shard
    is generated again. Learner ranks are not restarted: a lost rank fails the round; a rerun resumes it."""
    threads_per_actor: PositiveInt | Literal["auto"] = "auto"
    """torch/OpenMP threads in each learner and model judge (and each generator unless `generator_threads`
    is set). `auto`: on one machine without GPUs, every core divided among the learners (the stages take
    turns, so the one that works gets the machine); on a Ray cluster or with GPUs, 1. What a run chose is
    in its log and manifest (`cores`)."""
    generator_threads: PositiveInt | Literal["auto"] = "auto"
    """torch/OpenMP threads in each generator engine. `auto`: `threads_per_actor` when that is a number,
    else the cores divided among `generation.replicas` (1 when the replicas are `auto` too)."""
    judge_cpus: Annotated[float, Field(gt=0.0)] | None = None
    """CPUs of a model judge's actor (reward_model, pairwise); default `generator_cpus`."""
    judge_gpus: Annotated[float, Field(ge=0.0)] | None = None
    """GPUs of a model judge's actor; default `generator_gpus`. The judge lives for the whole run beside
    the learners and generators, so the cluster must hold all three (`selfplay validate --cluster`)."""

    @model_validator(mode="after")
    def _custom_only(self) -> ResourcesConfig:
        for name in ("learner_resources", "generator_resources"):
            reserved = sorted(k for k in getattr(self, name) if k in ("CPU", "GPU", "memory", "object_store_memory"))
            if reserved:
                raise ValueError(f"{name}: {reserved} come from the *_cpus/*_gpus fields; list custom resources only")
        return self


class LoggingConfig(Section):
    """Where a run's metrics go besides its run directory: per optimizer step (`train/*`, on
    `train/global_step`) and per iteration (`eval/*`, `pairs/*`, `round/*`, `seconds/*`, on `iteration`,
    the policy version). A resumed run continues the same tracked run, without repeating a step."""

    backends: list[Literal["tensorboard", "wandb", "mlflow"]] = ["tensorboard"]
    """Experiment trackers: `tensorboard` (`RUN_DIR/tensorboard`), `wandb` (its files in `RUN_DIR/wandb`;
    `WANDB_MODE=offline` works without a network, `wandb sync` uploads later), `mlflow`. wandb and mlflow are
    the optional extra `pip install -e '.[tracking]'`."""
    project: str | None = None
    """wandb project and mlflow experiment name; default `selfplay`."""
    run_name: str | None = None
    """Name of the tracked run; default the run directory's name."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI (`http://host:5000`, `sqlite:///mlflow.db`, `file:/path`); default MLflow's own
    (`MLFLOW_TRACKING_URI`, ...). MLflow 3 refuses a `file:` store unless `MLFLOW_ALLOW_FILE_STORE=true`."""

    @field_validator("backends")
    @classmethod
    def _installed(cls, backends: list[str]) -> list[str]:
        if len(set(backends)) < len(backends):
            raise ValueError(f"backends: {backends} names a backend twice")
        for name in backends:
            if name != "tensorboard" and importlib.util.find_spec(name) is None:
                raise ValueError(f"{name} is not installed; install the tracking extra: pip install -e '.[tracking]'")
        return backends


class RunConfig(Section):
    """A whole self-play run."""

    name: str = "selfplay"
    """Run name (used in logs and the default run directory)."""
    run_dir: str | None = None
    """Where iterations are written; default `runs/<name>`. `selfplay run` on it resumes."""
    seed: int = 0
    """Seed for prompt sampling, generation, data order and initialisation."""
    iterations: PositiveInt = 3
    """Self-play iterations (generate -> judge -> pairs -> train -> sync)."""
    stop_when_solved: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """End the run early after an iteration in which at least this share of its training prompts had every
    sample judged correct (e.g. 0.95): there is little left to learn from them. Unset: run every iteration.
    An iteration without any pair is never an error; it keeps the policy as it is."""
    policy: PolicyConfig
    """Starting policy."""
    task: TaskConfig
    """Prompts, references and (optionally) a verifier."""
    generation: GenerationConfig = GenerationConfig()
    judge: JudgeConfig | None = None
    """Turns samples into scores. Required unless the task is offline `pairs`."""
    pairing: PairingConfig = PairingConfig()
    train: TrainConfig = TrainConfig()
    sync: SyncConfig = SyncConfig()
    evaluation: EvalConfig = EvalConfig()
    resources: ResourcesConfig = ResourcesConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if isinstance(self.task, SessionsTaskConfig):
            self._check_sessions()
        self._check_judge()
        if self.sync.method == "nccl" and (self.resources.learner_gpus == 0 or self.resources.generator_gpus == 0):
            raise ValueError("sync.method: `nccl` needs GPUs on learners and generators; use object_store")
        if self.generation.tensor_parallel_size > 1 and self.resources.generator_gpus == 0:
            raise ValueError("generation.tensor_parallel_size: > 1 needs resources.generator_gpus > 0")
        if self.sync.lora == "adapter" and (self.generation.backend != "vllm" or self.sync.method == "nccl"):
            raise ValueError("sync.lora: `adapter` needs generation.backend vllm and sync.method object_store or "
                             f"filesystem (got {self.generation.backend}, {self.sync.method}); use auto or merged")
        if self.train.loss.type == "odpo" and isinstance(self.task, PairsTaskConfig):
            raise ValueError("train.loss.type: odpo's per-pair offsets come from judge scores, and offline "
                             "`pairs` have none; use sigmoid, or generate and judge the pairs")
        multi_turn = isinstance(self.task, PairsTaskConfig | SessionsTaskConfig)
        if self.train.loss.segment_turns is not None and not multi_turn:
            raise ValueError("train.loss.segment_turns: SDPO scores segments of multi-turn sessions, which come from "
                             "a `pairs` or `sessions` task (generated pairs are one reply each); see docs/data.md")
        if isinstance(self.task, PairsTaskConfig) and self.task.chunks is not None \
                and self.iterations > self.task.chunks:
            raise ValueError(f"iterations: {self.iterations} is more than task.chunks {self.task.chunks} "
                             "(sDPO trains iteration k on chunk k)")
        late = sorted(k for k in self.train.per_iteration if k >= self.iterations)
        if late:
            raise ValueError(f"train.per_iteration: iterations {late} are past the last one ({self.iterations - 1})")
        if self.generation.prompt_source == "files" and len(self.generation.prompt_files) < self.iterations:
            raise ValueError(f"generation.prompt_files: {len(self.generation.prompt_files)} file(s) for "
                             f"{self.iterations} iterations; give one per iteration")
        if self.generation.prompt_source == "files" and self.task.type != "dataset":
            raise ValueError("generation.prompt_source: `files` needs a `dataset` task (its columns name the prompt)")
        if self.train.loss.type == "sppo" and (self.judge is None or self.judge.type not in ("pairwise", "llm_judge")):
            raise ValueError("train.loss.type: `sppo` regresses on win probabilities; it needs a pairwise or "
                             "llm_judge judge (scores in [0, 1]); use sppo_hard otherwise")
        return self

    def _check_sessions(self) -> None:
        """A `sessions` task plays segments and pairs each played session against its negative one."""
        if self.train.loss.segment_turns is None:
            raise ValueError("train.loss.segment_turns: a `sessions` task plays segments of this many assistant "
                             "turns from each erroneous turn; set it (the paper's segments are 1-3 turns)")
        if self.judge is None:
            raise ValueError("judge: a `sessions` task needs a judge to pick the better session: python (a rule), "
                             "reward_model, pairwise or llm_judge")
        if self.judge.type in ("verifier", "sft"):
            raise ValueError(f"judge.type: a `sessions` task compares whole sessions and has no "
                             f"{'verifier' if self.judge.type == 'verifier' else 'reference answers'}; use python "
                             "(a rule), reward_model, pairwise or llm_judge")
        p = self.pairing
        changed = [name for name, used in (("strategy", p.strategy is not None), ("drop_ties", not p.drop_ties),
                                           ("length_penalty", p.length_penalty > 0),
                                           ("max_pairs_per_prompt", p.max_pairs_per_prompt is not None)) if used]
        if changed:
            raise ValueError(f"pairing.{changed[0]}: a `sessions` task pairs each session's best played "
                             "continuation against its negative one (ties dropped); only pairing.min_margin and "
                             "pairing.mix_previous apply")
        if self.policy.warmstart is not None:
            raise ValueError("policy.warmstart: a `sessions` task has no reference answers to fine-tune on; warm-start "
                             "the policy elsewhere and give it as policy.path")
        if self.generation.prompt_template is not None or self.generation.prompt_source == "files":
            field = "prompt_template" if self.generation.prompt_template is not None else "prompt_source"
            raise ValueError(f"generation.{field}: a `sessions` task plays chat sessions from its own file; "
                             "remove it")

    def _check_judge(self) -> None:
        strategy = self.pairing.strategy
        if self.judge is None:
            if not isinstance(self.task, PairsTaskConfig):
                raise ValueError("judge: required unless the task is offline `pairs`; e.g. {type: verifier}")
            return
        if self.judge.type == "sft":
            if strategy not in (None, "reference"):
                raise ValueError(f"pairing.strategy: the sft judge pairs against the reference; got {strategy!r}")
            if isinstance(self.task, DatasetTaskConfig) and self.task.reference_column is None:
                raise ValueError("task.reference_column: the sft judge needs reference answers; set it")
        elif strategy == "reference":
            raise ValueError("pairing.strategy: `reference` needs judge.type `sft`")
        if strategy == "best" and self.train.loss.type != "sft":
            raise ValueError(f"pairing.strategy: `best` makes SFT targets without a rejected side; it needs "
                             f"train.loss.type `sft` (got {self.train.loss.type!r})")
        if self.judge.type == "verifier" and isinstance(self.task, PairsTaskConfig):
            raise ValueError("judge.type: a `pairs` task has no verifier; use reward_model, llm_judge, ...")
        if self.judge.type == "verifier" and isinstance(self.task, DatasetTaskConfig) and self.task.grader is None:
            raise ValueError("judge.type: a `dataset` task has no verifier without task.grader (e.g. `grader: numeric` "
                             "on its reference column); or use reward_model, llm_judge, ...")

    @property
    def adapter_sync(self) -> bool:
        """Whether syncs ship the LoRA adapters alone (`train.lora` on, `sync.lora` resolved)."""
        if self.train.lora.r == 0 or self.sync.lora == "merged":
            return False
        if self.sync.lora == "auto" and not self.resources.generator_gpus:
            return False
        return self.generation.backend == "vllm" and self.sync.method != "nccl"

    @property
    def probe_tolerance(self) -> float:
        if self.sync.probe_tolerance is not None:
            return self.sync.probe_tolerance
        return 2e-2 if self.policy.dtype == "bfloat16" else 1e-3

    @property
    def pairing_strategy(self) -> str:
        if self.pairing.strategy is not None:
            return self.pairing.strategy
        return "reference" if self.judge is not None and self.judge.type == "sft" else "best_worst"
