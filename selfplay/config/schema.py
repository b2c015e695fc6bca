"""The one typed schema for a whole run, validated when a recipe is loaded.

Every section is a pydantic model that forbids unknown keys, so a typo in a recipe is an error that
names the field instead of a silently ignored setting. Field docstrings are the reference documentation
(``selfplay schema`` prints them). Backends that differ in their parameters (task, judge) are
discriminated unions on ``type``. Cross-field rules live in one ``model_validator`` per section.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfplay.losses import KTO_PARAMS, LOSS_PARAMS, REFERENCE_FREE, TDPO_PARAMS, validate_loss_params

PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


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


class PythonTaskConfig(Section):
    type: Literal["python"]
    target: Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")]
    """`module:attr` importable from the working directory; a Task class or factory."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments passed to `target`."""


TaskConfig = Annotated[
    ArithmeticTaskConfig | SortingTaskConfig | DatasetTaskConfig | PairsTaskConfig | PythonTaskConfig,
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
    replicas: PositiveInt = 1
    """Generator actors (each owns one engine)."""
    tensor_parallel_size: PositiveInt = 1
    """GPUs per generator engine (GPU clusters only)."""
    max_model_len: PositiveInt = 512
    """Context length of the generator engine (prompt + completion)."""
    shard_size: PositiveInt = 64
    """Prompts per generations shard; a crash loses at most the shards in flight."""

    @model_validator(mode="after")
    def _top_k(self) -> GenerationConfig:
        if self.top_k == 0:
            raise ValueError("top_k: 0 is not allowed; use -1 to disable top-k or a positive k")
        return self


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

    strategy: Literal["best_worst", "best_random", "all_pairs", "reference"] | None = None
    """Default: `reference` with the `sft` judge (SPIN), otherwise `best_worst`."""
    min_margin: Annotated[float, Field(ge=0.0)] = 0.0
    """Drop pairs whose score margin is below this."""
    drop_ties: bool = True
    """Drop pairs with equal scores."""
    length_penalty: Annotated[float, Field(ge=0.0)] = 0.0
    """Subtract this times the response length (in tokens) from scores before pairing."""
    max_pairs_per_prompt: PositiveInt | None = None
    """Cap on pairs per prompt (`all_pairs` and `reference` can make many)."""
    mix_previous: Probability = 0.0
    """Fraction of the previous iteration's pairs mixed into this round (SPIN's option)."""


# ---------------------------------------------------------------------------------------------- train
ALL_LOSSES = tuple(sorted([*LOSS_PARAMS, "kto", "tdpo"]))


def loss_param_defaults(loss_type: str) -> dict[str, Any]:
    if loss_type == "kto":
        return dict(KTO_PARAMS)
    if loss_type == "tdpo":
        return dict(TDPO_PARAMS)
    return dict(LOSS_PARAMS[loss_type])


class LossConfig(Section):
    type: str = "sigmoid"
    """A preference loss (`sigmoid`, `ipo`, `simpo`, ...), `kto` or `tdpo`. See selfplay/losses."""
    beta: Annotated[float, Field(gt=0.0)] = 0.1
    """Strength of the implicit KL constraint (temperature of the implicit reward)."""
    params: dict[str, Any] = {}
    """Loss-specific parameters, e.g. `{label_smoothing: 0.1}` for cDPO; unknown names are errors."""

    @model_validator(mode="after")
    def _known(self) -> LossConfig:
        if self.type not in ALL_LOSSES:
            raise ValueError(f"type: unknown loss {self.type!r}; allowed: {', '.join(ALL_LOSSES)}")
        allowed = loss_param_defaults(self.type)
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            names = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"params: {unknown} not accepted by loss {self.type!r}; allowed: {names}")
        if self.type in LOSS_PARAMS:  # ranges (e.g. robust's label_smoothing < 0.5) are the loss library's
            try:
                validate_loss_params(self.type, self.params)
            except ValueError as exc:
                raise ValueError(f"params: {exc}") from None
        return self

    @property
    def reference_free(self) -> bool:
        return self.type in REFERENCE_FREE

    def resolved_params(self) -> dict[str, Any]:
        return {**loss_param_defaults(self.type), **self.params}


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
    max_prompt_length: PositiveInt = 256
    """Most prompt tokens kept (left-truncated)."""
    max_completion_length: PositiveInt = 256
    """Most completion tokens kept."""
    truncation: Literal["truncate", "drop"] = "truncate"
    """Over-long pairs are truncated or dropped; the count is reported either way."""
    length_grouping: Literal["sorted", "megabatch", "random"] = "megabatch"
    """Batches of similar lengths: globally `sorted` (least padding, one length class per batch),
    sorted within random windows of 64 micro-batches (`megabatch`, like HF group_by_length), or `random`.
    Use `random` where length tracks content (e.g. answer length = difficulty). Also used by the warm start."""
    checkpoint_every: Annotated[int, Field(ge=0)] = 0
    """Save a resumable learner checkpoint every this many optimizer steps (0 = end of round only)."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapters instead of full fine-tuning (see docs/lora.md); off unless `r` > 0."""

    @model_validator(mode="after")
    def _zero(self) -> TrainConfig:
        if self.optimizer_offload and self.zero_stage == 0:
            raise ValueError("optimizer_offload: needs zero_stage 1, 2 or 3 (got 0)")
        if self.lora.r > 0 and self.loss.type == "tdpo":
            raise ValueError("lora: not supported with loss tdpo yet (its frozen reference model is a full copy); "
                             "set lora.r: 0 or use another loss")
        return self


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


class EvalConfig(Section):
    """Held-out evaluation after every `every` iterations (and of the starting policy)."""

    num_prompts: Annotated[int, Field(ge=0)] = 500
    """Held-out prompts; 0 disables evaluation."""
    every: PositiveInt = 1
    """Evaluate every this many iterations."""
    temperature: Annotated[float, Field(ge=0.0)] = 0.0
    """Sampling temperature for evaluation (0 = greedy)."""
    win_rate: bool = True
    """Win rate against the initial policy under the judge (needs a judge that compares)."""


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
    threads_per_actor: PositiveInt = 1
    """torch/OpenMP threads in each actor (set explicitly: oversubscription is the main CPU slowdown)."""

    @model_validator(mode="after")
    def _custom_only(self) -> ResourcesConfig:
        for name in ("learner_resources", "generator_resources"):
            reserved = sorted(k for k in getattr(self, name) if k in ("CPU", "GPU", "memory", "object_store_memory"))
            if reserved:
                raise ValueError(f"{name}: {reserved} come from the *_cpus/*_gpus fields; list custom resources only")
        return self


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

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        self._check_judge()
        if self.sync.method == "nccl" and (self.resources.learner_gpus == 0 or self.resources.generator_gpus == 0):
            raise ValueError("sync.method: `nccl` needs GPUs on learners and generators; use object_store")
        if self.generation.tensor_parallel_size > 1 and self.resources.generator_gpus == 0:
            raise ValueError("generation.tensor_parallel_size: > 1 needs resources.generator_gpus > 0")
        return self

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
        if self.judge.type == "verifier" and isinstance(self.task, DatasetTaskConfig | PairsTaskConfig):
            raise ValueError(f"judge.type: a `{self.task.type}` task has no verifier; use reward_model, llm_judge, ...")

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
