"""The learner: one DeepSpeed rank that trains the policy for one round per self-play iteration.

The same class runs in-process (world size 1, no Ray: tests, a single GPU) and as one rank of a W-rank
world inside a Ray actor (``actors/learner.py``). Every public method is collective: in a W-rank world all
ranks call it with the same arguments; results that are not per-rank come back on rank 0.

A round (``train_round``/``sft_round``) is: tokenise -> plan the steps from the seed -> for each step run
this rank's micro-batches (forward, loss, backward), reduce the statistics, check they are finite, take
the optimizer step, log, maybe checkpoint. What depends on the loss (reference columns, encoding,
per-step hook, micro-batch loss) is its objective family's (``family.py``); what depends on LoRA is the
weights variant's (``variant.py``). Choices:

* **Fresh optimizer state per round** (AdamW moments and the LR schedule restart; the weights carry over),
  so an iteration's starting state is just the previous iteration's weights, an immutable artifact. A
  round restarted after ``load_checkpoint`` continues with the saved optimizer state instead, when the
  round is the same (same data fingerprint and settings); it then ends with the same weights as an
  uninterrupted round.
* **Exact averaging**: each micro-batch's summed loss is divided by the example count of the whole step
  (times W, because DeepSpeed averages gradients over ranks), so ``W=1 x 2`` accumulation and ``W=2 x 1``
  give the same gradient.
* **Numerical guard** (``step.py``): a NaN/inf loss or gradient norm stops the round before the optimizer
  step with :class:`NonFiniteError` naming the step and its table rows; the weights stay the last good ones.
* **Dropout off** by default (``train.disable_dropout``), and reference log-probs come from the same
  forward path as training (prefix sharing only where training uses it), so at step 0 the policy's
  log-probs equal the stored reference's and every implicit reward starts at exactly 0.
* Fixed at construction: ZeRO stage, precision, offload, gradient checkpointing, LoRA (``variant.py``). Per
  round: everything else in ``TrainConfig`` (lr, schedule, epochs, batch sizes, clipping, loss).
"""

from __future__ import annotations

import copy
import hashlib
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from selfplay.env import setup_env
from selfplay.losses import token_logps
from selfplay.records import PRESCORED_KEY
from selfplay.train import checkpoint as ckpt
from selfplay.train import lora
from selfplay.train import reference as ref
from selfplay.train.batches import plan_round
from selfplay.train.data import Encoded, encode_pairs, read_table, table_fingerprint
from selfplay.train.engine import (
    build_engine,
    compute_dtype,
    destroy_distributed,
    device_for,
    init_distributed,
    model_from_state,
)
from selfplay.train.family import REFERENCE_COLUMN, SFT, Family, Objective, family_for
from selfplay.train.metrics import MetricsWriter
from selfplay.train.objective import shares_prefix
from selfplay.train.rounds import RoundSpec, metrics_record, round_fingerprint, summary
from selfplay.train.step import optimizer_step, step_rows
from selfplay.train.variant import weights_for

DROPOUT_ATTRIBUTES = ("attention_dropout", "attn_dropout", "resid_dropout", "embd_dropout", "hidden_dropout",
                      "activation_dropout", "dropout")


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout probability of ``model``: ``nn.Dropout`` modules, and the float rates that attention
    code reads from its module or config (e.g. Llama's ``attention_dropout``, GPT-2's ``attn_pdrop``)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in DROPOUT_ATTRIBUTES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    if config is not None:
        for name, value in list(vars(config).items()):
            if isinstance(value, float) and (name.endswith("dropout") or name.endswith("pdrop")):
                setattr(config, name, 0.0)


class Learner:
    """One learner rank owning a DeepSpeed engine over a Hugging Face causal LM."""

    def __init__(self, model_path: str | Path, cfg: Any, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 output_dir: str | Path | None = None, master_addr: str | None = None,
                 master_port: int | None = None, local_rank: int = 0, threads: int | None = None,
                 timeout_s: float = 1800.0, tensorboard: bool = True) -> None:
        setup_env(threads)
        self.cfg, self.rank, self.world_size, self.seed = cfg, rank, world_size, seed
        self.device = device_for(local_rank)
        init_distributed(rank, world_size, master_addr, master_port, local_rank, timeout_s)
        self.engine = self.optimizer = None
        self.reload(model_path, cfg)
        self._tensorboard = tensorboard  # False: the steps go to train_metrics.jsonl only (logging.backends)
        self.metrics = MetricsWriter(output_dir if rank == 0 else None, tensorboard=tensorboard)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        # TensorBoard stays in output_dir/tensorboard when the step log moves (the loop: one run of
        # curves over every round, on the global step, instead of one per iteration directory)
        self._tensorboard_dir = self.metrics.tb_dir
        self.global_step = 0
        self._round_state: dict[str, Any] | None = None  # fingerprint, position, round_index while a round runs
        self._saved_step = -1

    def reload(self, model_path: str | Path, cfg: Any = None) -> None:
        """(Re)build the engine from a model directory, optionally with another ``TrainConfig``. Collective.

        Keeps the process (and its process group): a driver can start an iteration from an HF directory,
        or change ZeRO stage/precision, without starting new ranks. Optimizer state and any frozen
        reference are dropped; the round counter restarts at 0, the global step (the metrics' x-axis) does not.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = cfg or self.cfg
        if self.engine is not None:
            self.engine.destroy()
            self.engine = self.optimizer = self.ref_model = None
        base, adapter = weights_for(cfg).source(model_path, cfg)  # LoRA: an export may name its base + adapter
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        self._setup(model, cfg, base, adapter)
        self._resume = None
        self.rounds = 0

    def _setup(self, model: torch.nn.Module, cfg: Any, base: Path | None, adapter: Path | None = None) -> None:
        if getattr(cfg, "disable_dropout", True):
            disable_dropout(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        self.cfg = cfg
        model, self.variant = weights_for(cfg).build(model, cfg, base, adapter, self.seed)  # full or LoRA
        self.param_counts = {"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                             "total_params": sum(p.numel() for p in model.parameters())}
        self.engine, self.optimizer = build_engine(model, cfg, self.world_size)
        self.engine.train()
        self.dtype = compute_dtype(cfg)
        # Prompt KV-cache reuse needs use_cache in training, which gradient checkpointing forbids.
        self.share_prefix = not cfg.gradient_checkpointing
        # A forward per completion key when their lengths differ: not under ZeRO-3, whose ranks must run
        # the same forwards (see objective.run_model).
        self.split_keys = int(cfg.zero_stage) != 3
        self.ref_model: torch.nn.Module | None = None  # a family's frozen reference (TDPO)
        self._prescored: dict[tuple[ref.Sequence, ...], dict[ref.Sequence, float]] = {}  # see prescore

    def _rebuild(self, cfg: Any) -> None:
        """Rebuild the engine under ``cfg`` from the current weights, LoRA adapters merged in (fresh ones
        when ``cfg`` has LoRA on; see ``variant.py``). Collective."""
        state = dict(lora.hf_params(self.engine, None, to_all=True))
        model = model_from_state(copy.deepcopy(self.engine.module.config), state, what="merged weights")
        base = self.variant.export
        self.engine.destroy()
        self.engine = self.optimizer = None
        self._setup(model, cfg, Path(base) if base else None)

    # ------------------------------------------------------------------------------------------ rounds
    def train_round(self, pairs: pa.Table | str | Path | list[dict], cfg: Any = None, *,
                    checkpoint_dir: str | Path | None = None,
                    on_step: Callable[[dict[str, Any]], None] | None = None,
                    final_checkpoint: bool = True) -> dict[str, Any]:
        """One round of ``cfg.loss``'s objective family (``family.py``) on ``pairs`` (with the reference
        columns that family needs).

        ``checkpoint_dir``: where ``cfg.checkpoint_every`` checkpoints (and one at the end) go.
        ``final_checkpoint=False`` skips the one at the end: for a caller that saves the round's weights
        itself (the loop writes the policy directory), since the next round starts with fresh AdamW
        moments and the end checkpoint's optimizer state (twice the weights' bytes) would never be read.
        ``on_step(record)``: called on every rank after each optimizer step (metrics, fault injection).
        Returns the round summary (rank 0's view; identical on all ranks).
        With loss ``sft`` the round is an SFT round on the ``chosen`` responses (rejection-sampling
        fine-tuning when the rows are each prompt's best verified sample); ``rejected`` may then be null.
        """
        cfg = cfg or self.cfg
        family = family_for(cfg.loss)
        return self._train(family, family.rows(read_table(pairs)), cfg, checkpoint_dir, on_step, final_checkpoint)

    def sft_round(self, examples: pa.Table | str | Path | list[dict], cfg: Any = None, *,
                  checkpoint_dir: str | Path | None = None,
                  on_step: Callable[[dict[str, Any]], None] | None = None,
                  final_checkpoint: bool = True) -> dict[str, Any]:
        """Supervised fine-tuning (mean NLL per completion token) on (prompt, reference) examples.

        ``cfg``: a ``WarmStartConfig`` (its ``examples`` caps the rows used) or a ``TrainConfig``; fields it
        lacks come from the learner's ``TrainConfig``. With LoRA it trains every weight (see ``variant.py``).
        """
        cfg = cfg or self.cfg
        table = read_table(examples)
        limit = getattr(cfg, "examples", None)
        if limit is not None and table.num_rows > limit:
            table = table.slice(0, limit)
        return self._train(SFT, table, cfg, checkpoint_dir, on_step, final_checkpoint)

    def _train(self, family: Family, table: pa.Table, cfg: Any, checkpoint_dir: str | Path | None,
               on_step: Callable | None, final_checkpoint: bool) -> dict[str, Any]:
        data = family.encode(self, table, cfg)
        family.check(table, cfg)
        if family.frozen_reference and self.ref_model is None:
            self.ref_model = self._frozen_reference(table)
        objective = family.bind(self, data, cfg)
        return self._round(family.kind, table, data, RoundSpec.of(cfg, self.cfg), objective, checkpoint_dir,
                           on_step, cfg, final_checkpoint)

    def _round(self, kind: str, table: pa.Table, data: Encoded, spec: RoundSpec, objective: Objective,
               checkpoint_dir: str | Path | None, on_step: Callable | None, cfg: Any,
               final_checkpoint: bool = True) -> dict[str, Any]:
        self._prescored = {}  # the weights change from here on
        table_hash = table_fingerprint(table)
        fingerprint = round_fingerprint(kind, table_hash, cfg, spec, self.world_size, self.seed)
        resume, self._resume = self._resume, None
        resuming = resume is not None and resume.get("fingerprint") == fingerprint
        if resume is not None and not resuming:
            warnings.warn(f"the loaded checkpoint belongs to another round (data or settings differ); starting "
                          f"this {kind} round from step 0 with the loaded weights", stacklevel=4)
        round_index = int(resume["round_index"]) if resuming else self.rounds
        start = int(resume["position"]) if resuming else 0
        # The data order depends on the run seed and the data only (not on how many rounds this process
        # ran), so a round restarted in a new process plans the same steps.
        plan_seed = int(hashlib.sha256(f"{self.seed}:{kind}:{table_hash}".encode()).hexdigest()[:12], 16)
        plan = plan_round(data.lengths(), spec.micro_batch_size, self.world_size, spec.accumulation, plan_seed,
                          spec.epochs, spec.length_grouping)
        if not plan:
            raise ValueError(f"{kind} round has no examples left (input {data.stats})")
        reference = getattr(cfg, "reference", self.cfg.reference)
        with self.variant.round(kind, resuming, reference, self.cfg, self._rebuild):  # LoRA may rebuild the engine
            spec.apply(self.engine, self.optimizer)
            if not resuming:
                self.optimizer.state.clear()  # fresh AdamW moments for a new round
            self.scheduler = spec.scheduler(self.optimizer, len(plan), start)
            self._round_state = {"fingerprint": fingerprint, "position": start, "round_index": round_index}
            t_round = time.perf_counter()
            records = self._steps(kind, data, spec, objective, plan, start, round_index, checkpoint_dir, on_step)
            self.rounds = round_index + 1
            if checkpoint_dir and final_checkpoint and self._saved_step != self.global_step:
                self.save_checkpoint(checkpoint_dir)
            self._round_state = None
            return {**summary(kind, records, data.stats, start, len(plan), time.perf_counter() - t_round),
                    **self.param_counts}

    def _steps(self, kind: str, data: Encoded, spec: RoundSpec, objective: Objective, plan: list, start: int,
               round_index: int, checkpoint_dir: str | Path | None, on_step: Callable | None
               ) -> list[dict[str, Any]]:
        """The round's optimizer steps from position ``start``, and their records."""
        records: list[dict[str, Any]] = []
        for position in range(start, len(plan)):
            epoch, step = plan[position]
            t0 = time.perf_counter()
            where = f"{kind} round step {position + 1}/{len(plan)} (epoch {epoch})"
            denom = objective.denominator(data, step)
            stats, lr, norm = optimizer_step(self.engine, self.optimizer, objective.loss, data,
                                             step.for_rank(self.rank, spec.accumulation), denom, self.world_size,
                                             self.device, where + f", table rows {step_rows(data, step)}",
                                             objective.per_step)
            self.scheduler.step()
            self.global_step += 1
            self._round_state["position"] = position + 1
            self.variant.stepped()
            record = metrics_record(kind, stats, denom, time.perf_counter() - t0, lr=lr, grad_norm=norm,
                                    round_index=round_index, step=position + 1, global_step=self.global_step,
                                    epoch=epoch)
            records.append(record)
            self.metrics.write(record, self.global_step)
            if checkpoint_dir and spec.checkpoint_every and (position + 1) % spec.checkpoint_every == 0:
                self.save_checkpoint(checkpoint_dir)
            if on_step is not None:
                on_step(record)
        return records

    # --------------------------------------------------------------------------------------- reference
    def prescore(self, sequences: pa.Table | str | Path | list[dict], cfg: Any = None) -> int:
        """Score one group of ``prompt``/``completion`` rows (``completion_token_ids`` when known) with the
        current weights now, and hold the values for a later ``compute_reference(..., groups=[...])`` that
        names the same group; any change of weights drops them. The loop calls this for each generation
        shard as it arrives, so the reference pass runs while later shards are sampled. A group is
        scored by itself, here or in ``compute_reference``, so the numbers are the same either way (a
        resumed run that never prescored gets the very same reference columns). Returns the count."""
        cfg = cfg or self.cfg
        seqs = self._group_sequences(read_table(sequences), cfg)
        if seqs not in self._prescored:
            self._prescored[seqs] = self._score_group(self.engine, seqs)
        return len(seqs)

    def _group_sequences(self, table: pa.Table, cfg: Any) -> tuple[ref.Sequence, ...]:
        data = encode_pairs(table, self.tokenizer, cfg, ("completion",))  # the pairs' limits: the same tokens
        return tuple(dict.fromkeys((tuple(p), tuple(c)) for p, c in zip(data.prompts, data.completions["completion"])))

    def _score_group(self, model: Any, seqs: tuple[ref.Sequence, ...]) -> dict[ref.Sequence, float]:
        group = Encoded([list(p) for p, _ in seqs], {"completion": [list(c) for _, c in seqs]},
                        np.arange(len(seqs), dtype=np.int64))
        values = ref.score_sequences(model, list(seqs), self.pad_id, self.device, 4 * self.cfg.micro_batch_size,
                                     share_prefix=shares_prefix(model, group, self.share_prefix),
                                     split=self.split_keys)
        return values  # score() leaves the engine in the mode it found it in

    def compute_reference(self, pairs: pa.Table | str | Path | list[dict], model_path: str | Path | None = None,
                          cfg: Any = None, *, as_reference: bool = True, only_rejected: bool = False,
                          groups: list[pa.Table] | None = None) -> pa.Table:
        """``pairs`` with reference log-prob columns from the current weights (or from ``model_path``).

        The loss's family (``family.py``) says which completions are scored (none: ``pairs`` come back as
        they are). For ``tdpo`` this also (re)builds the frozen reference model used during training, unless
        ``as_reference=False``: then the columns are only a measurement (the loop's drift after a round)
        and the round's frozen reference is kept. ``only_rejected`` scores the rejected completions alone
        (a measurement: only ``ref_rejected_logps`` is written). ``groups`` (tables of ``prompt``/
        ``completion`` rows, see :meth:`prescore`) are scored group by group first (taken from what
        ``prescore`` holds, for the current weights); the pairs' other sequences are scored after.
        """
        cfg = cfg or self.cfg
        table = read_table(pairs)
        family = family_for(cfg.loss)
        if not family.needs_reference:
            return table
        data = encode_pairs(table, self.tokenizer, cfg)
        data, keys = (data, ("rejected",)) if only_rejected else family.reference_view(data, self.seed)
        # LoRA: a reference that is the learner's base is the same network with the adapters disabled.
        base_only = self.variant.base_only(self.engine, model_path)
        model = (self.engine if model_path is None or base_only is not None
                 else ref.load_plain_model(str(model_path), self.dtype, self.device))
        if family.frozen_reference and as_reference:
            self.ref_model = (ref.frozen_reference(self.engine, self.engine.module.config, self.dtype, self.device)
                              if model_path is None else model)
        held, self._prescored = self._prescored, {}
        known: dict[ref.Sequence, float] = {}
        taken = 0
        with base_only or nullcontext():
            for group in groups or ():
                seqs = self._group_sequences(read_table(group), cfg)
                hit = model_path is None and seqs in held
                taken += hit
                known.update(held[seqs] if hit else self._score_group(model, seqs))
            values = ref.score_unique(model, data, keys, self.pad_id, self.device,
                                      batch_size=2 * cfg.micro_batch_size,
                                      share_prefix=shares_prefix(model, data, self.share_prefix),
                                      split=self.split_keys, known=known)
        self.engine.train()
        meta = {**ref.reference_meta(cfg), "reference_model": None if model_path is None else str(model_path)}
        out = ref.with_columns(table, data.rows, {REFERENCE_COLUMN[k]: v for k, v in values.items()}, meta)
        if groups:  # how much was scored ahead: for the caller's log (records.pop_prescored), not for the artifact
            out = out.replace_schema_metadata({**out.schema.metadata, PRESCORED_KEY: f"{taken}/{len(groups)}"})
        return out

    def _frozen_reference(self, table: pa.Table) -> torch.nn.Module:
        """A frozen reference (TDPO's) when compute_reference did not run in this process (a restarted driver):
        the model directory the columns were computed from, else the weights held now (the round's start)."""
        source = ref.stored_meta(table).get("reference_model")
        if source:
            return ref.load_plain_model(source, self.dtype, self.device)
        return ref.frozen_reference(self.engine, self.engine.module.config, self.dtype, self.device)

    def probe_logps(self, sequences: list[list[int]]) -> list[list[float]]:
        """fp32 log-prob of each token ``t >= 1`` of each sequence given its prefix (no grad). Sequences of
        the same length share one forward pass (no padding, so nothing else changes)."""
        out: list[list[float]] = [[] for _ in sequences]
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(sequences):
            by_length.setdefault(len(seq), []).append(i)
        self.engine.eval()
        with torch.no_grad():
            for rows in by_length.values():
                ids = torch.tensor([sequences[i] for i in rows], dtype=torch.long, device=self.device)
                logits = self.engine(input_ids=ids, use_cache=False).logits
                mask = torch.ones_like(ids[:, 1:], dtype=torch.bool)
                for i, lp in zip(rows, token_logps(logits[:, :-1], ids[:, 1:], mask).float().cpu().tolist()):
                    out[i] = lp
        self.engine.train()
        return out

    # ---------------------------------------------------------------------------------------- outputs
    def export_weights(self, bucket_mb: float = 64.0, version: int = 0, dtype: str | None = None,
                       split: bool = False, part: str = "policy") -> list[Any]:
        """Full HF-named weights as safetensors buckets on rank 0 (``[]`` elsewhere). Collective.
        ``split=True`` may return split buckets that view the live parameters (see ``export_buckets``).
        ``part`` (LoRA): ``policy`` (merged), ``base`` or ``adapter`` (see ``lora.export_part``)."""
        return ckpt.export_buckets(self.engine, bucket_mb, version, self._dtype(dtype), split, part)

    def lora_base(self) -> str | None:
        """The directory holding exactly this learner's base weights (LoRA), when known; else None."""
        return self.variant.base

    def save_hf(self, out_dir: str | Path, dtype: str | None = None) -> str | None:
        """Write a standard Hugging Face directory (rank 0, atomically). Collective."""
        base = self.variant.adapter_base(out_dir)
        path = ckpt.save_hf(self.engine, self.tokenizer, out_dir, self._dtype(dtype), adapter_base=base)
        self.variant.saved(out_dir)  # LoRA: remember what this directory holds
        return None if path is None else str(path)

    def save_checkpoint(self, ckpt_dir: str | Path) -> str:
        """Resumable DeepSpeed checkpoint (weights, optimizer, round position, RNG). Collective."""
        client = {"global_step": self.global_step, "rounds": self.rounds, "round": self._round_state}
        path = ckpt.save_checkpoint(self.engine, ckpt_dir, self.global_step, client, self.ref_model)
        self._saved_step = self.global_step
        return str(path)

    def load_checkpoint(self, ckpt_dir: str | Path) -> dict[str, Any]:
        """Restore a checkpoint; the next ``train_round`` on the same round's data resumes where it stopped."""
        self._prescored = {}
        client = ckpt.load_checkpoint(self.engine, ckpt_dir)
        self.variant.stepped()  # LoRA: the loaded adapters are trained ones
        self.global_step = int(client.get("global_step", 0))
        self.rounds = int(client.get("rounds", 0))
        self._resume = client.get("round")
        if client.get("reference_file"):
            self.ref_model = ref.load_frozen(client["reference_file"], self.engine.module.config, self.dtype,
                                             self.device)
        return {"global_step": self.global_step, "round": self._resume, "tag": client.get("tag")}

    def set_counters(self, rounds: int, global_step: int) -> None:
        """Number the next round ``rounds`` and its first step ``global_step + 1`` (a learner started in a
        resumed run continues the numbering of the run; ``load_checkpoint`` then restores a round's own)."""
        self.rounds, self.global_step = int(rounds), int(global_step)

    def set_metrics_dir(self, out_dir: str | Path | None) -> None:
        """Write ``train_metrics.jsonl`` to ``out_dir`` from now on (rank 0); TensorBoard events too, unless
        the learner was started with an ``output_dir``: they stay in its ``tensorboard/``."""
        self.metrics.close()
        self.metrics = MetricsWriter(out_dir if self.rank == 0 else None, tensorboard=self._tensorboard,
                                     tensorboard_dir=self._tensorboard_dir)
        self.output_dir = Path(out_dir) if out_dir is not None else None

    def shutdown(self) -> None:
        """Close the metrics writer and leave the process group."""
        self.metrics.close()
        destroy_distributed()

    def _dtype(self, name: str | None) -> torch.dtype:
        return self.dtype if name is None else {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
