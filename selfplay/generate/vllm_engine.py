"""The one module that talks to vLLM: generation, weight reload and probe log-probs on a ``vllm.LLM``.

vLLM's Python API changes between releases and broken weight sync is the usual symptom (OpenRLHF
#922), so every vLLM call of the project is here and in ``vllm_worker.py``, and nothing else imports
vllm. Choices:

* In-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``enforce_eager=True``): it starts several
  times sooner on CPU than a separate engine process (docs/benchmarks.md, "Measurements behind choices in
  the code"), and the worker runs in this process, so new weights are handed over as tensors without a
  copy: views into the received buckets (for the object store, Ray's shared memory), which
  ``reload_weights`` copies into the model's parameters, the one copy on this side. With a separate
  engine process (a user setting) buckets travel as bytes instead; both paths end in the worker's
  ``reload_weights``.
* Prompts are tokenized here with the shared :func:`encode_prompts` and passed as token ids, so the
  HF engine and vLLM see identical inputs.
* A sync is verified completely (:func:`decode_sync`) before any weight is loaded; a bad bucket leaves
  the engine on its previous weights and version. If the load itself fails half way, the engine marks
  itself broken (version -1) and refuses to generate until a good sync arrives.
* ``info()["last_load"]`` says what the last sync cost here: seconds to verify, seconds in the engine.
* ``probe_logps`` uses ``prompt_logprobs=0``: the log-prob of each given token under the model, the
  same quantity the learner computes, for sync verification.
* LoRA (``lora=AdapterSpec``, from ``train.lora`` with ``sync.lora: adapter``): the engine starts with
  ``enable_lora`` on the base weights and serves the adapter of the last :meth:`VLLMEngine.load_adapter`
  on every request (``lora_request``). The adapter arrives as verified buckets of PEFT-named tensors and
  is handed to vLLM as an adapter directory under a new integer id per load (see ``adapter.py``). A full
  load (``load_buckets``) replaces the base, after which no adapter is served until the next
  ``load_adapter``: the full weights a sync pushes are either a merged policy or a base whose adapter
  follows. The probe cannot use ``prompt_logprobs`` on an engine started for adapters (with or without
  one applied): vLLM's LoRA logits processor maps one adapter row per request, not per prompt token,
  and raises (on CPU: ``einsum(): subscript b has size 2 ...``, vLLM issues 16668 and 29955), after
  which the in-process engine hangs. So there each probe position is its own one-token request on the prefix,
  asking for the log-prob of the next probe token (``logprob_token_ids``: the raw log-prob, before any
  sampling transform); prefix caching shares the prefixes' work.
* On the CPU backend, chunked prefill is off (:func:`cpu_scheduler_kwargs`). With it on, a prompt that
  does not fit the step's token budget is prefilled in chunks, and vLLM samples a token after each
  partial chunk and discards it. For a seeded request it then rewinds the request's generator with
  ``get_offset``/``set_offset`` (``gpu_model_runner._bookkeeping_sync``), which only CUDA's Philox
  generator has: a CPU ``torch.Generator`` raises ``RuntimeError: CPU Generator does not use offset``,
  so every seeded run with enough prompt tokens crashed. Of the fixes, this is the one that uses a
  setting vLLM supports (its CPU platform turns chunked prefill off itself for MLA models) and it gives
  the stronger guarantee: no request ever draws a random number it throws away, so a request's samples
  depend only on its own seed, not on how the scheduler split prompts into steps (which changes with the
  batch, its order and prefix-cache hits). The alternatives were rejected: patching the worker to
  snapshot and restore each seeded generator's Mersenne-Twister state around every step reaches into
  model-runner internals that change every release; seeding the engine once instead of per request
  makes a sample depend on its shard's other prompts. The cost is that a long prompt waits for a step
  with room for all of it (the step budget is at least ``max_model_len``): generation of long prompts is
  somewhat slower (measured once: docs/benchmarks.md, "Measurements behind choices in the code"), which we
  take for reproducible samples. On GPUs
  chunked prefill stays on (Philox generators rewind). A user who turns it back on through the engine
  kwargs gets a clear error on the first seeded call instead of vLLM's.

vLLM is imported inside the methods that use it, never at module import, so that a process that only
names this module (``import selfplay``, the driver) never loads vLLM (tests/test_import.py).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from selfplay.generate.adapter import AdapterSpec, adapter_names, write_adapter_dir
from selfplay.generate.types import Completion, Sampling, encode_prompts, engine_info
from selfplay.generate.weights import checkpoint_names, decode_sync, load_stats
from selfplay.sync.buckets import joined

WORKER_EXTENSION = "selfplay.generate.vllm_worker.SelfplayWorkerExtension"
BROKEN = -1
CPU_STEP_TOKENS = 4096  # vLLM's own default step token budget for the CPU backend (LLM class)


def cpu_scheduler_kwargs(max_model_len: int, user_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Scheduler settings for the CPU backend: chunked prefill off (see the module docstring), and a
    step token budget that holds the longest prompt (vLLM refuses a smaller one when chunking is off).
    Settings the user gave in ``user_kwargs`` are left to them."""
    out: dict[str, Any] = {"enable_chunked_prefill": False}
    if "max_num_batched_tokens" not in user_kwargs:
        out["max_num_batched_tokens"] = max(max_model_len, CPU_STEP_TOKENS)
    return out


def _eager_sampler_helpers() -> None:
    """On the CPU backend, run vLLM's few ``torch.compile``-decorated sampler helpers eagerly.

    With ``enforce_eager`` the model itself is never compiled, but vLLM still compiles small helpers with
    inductor on their first use: the first prompt-log-prob request (the first verified sync's probe, or a
    recipe's ``generation.logprobs``) spent far longer compiling ``batched_count_greater_than`` than running
    it eagerly, with identical log-probs (docs/benchmarks.md; ``python -m bench.sync``'s ``probe`` column is
    the probe's time). Dynamo is switched off for this process (an engine's
    process runs nothing else that compiles); ``TORCHDYNAMO_DISABLE`` set by the user is left alone."""
    if "TORCHDYNAMO_DISABLE" in os.environ:
        return
    import torch._dynamo

    torch._dynamo.config.disable = True


class VLLMEngine:
    """A policy served by an in-process ``vllm.LLM``; ``version``/``checksum`` say which weights it holds."""

    backend = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "auto",
        max_model_len: int = 512,
        seed: int = 0,
        version: int = 0,
        tensor_parallel_size: int = 1,
        kv_cache_gb: int | None = None,
        gpu_memory_utilization: float | None = None,
        lora: AdapterSpec | None = None,
        **llm_kwargs: Any,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if kv_cache_gb is not None:  # CPU backend only; the default (setup_env) is 1 GiB
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gb)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if on_cpu:
            llm_kwargs = {**cpu_scheduler_kwargs(max_model_len, llm_kwargs), **llm_kwargs}
            _eager_sampler_helpers()
        self._chunked_cpu = on_cpu and bool(llm_kwargs.get("enable_chunked_prefill"))
        if gpu_memory_utilization is not None:
            llm_kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if lora is not None:
            llm_kwargs = {"enable_lora": True, "max_lora_rank": lora.max_lora_rank(), "max_loras": 1, **llm_kwargs}
        self.model_path = Path(model_path)
        self._llm = LLM(
            model=str(model_path),
            tokenizer=str(model_path),
            dtype=dtype,
            enforce_eager=True,
            max_model_len=max_model_len,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            worker_extension_cls=WORKER_EXTENSION,
            **llm_kwargs,
        )
        self.tokenizer = self._llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.vocab_size = self._llm.llm_engine.model_config.get_vocab_size()
        self._names = checkpoint_names(model_path)
        self._in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        self.version = version
        self.checksum: str | None = None
        self.last_load: dict[str, Any] | None = None
        self.lora = lora
        self._adapter: Any = None  # the LoRARequest every request carries (None: the base alone)
        self._adapter_ids = 0
        self._adapter_root: Path | None = None
        self._adapter_names = adapter_names(self._names, lora.target_modules) if lora is not None else []

    # ------------------------------------------------------------------------------------ generation
    def generate(
        self, prompts: Sequence[Any], sampling: Sampling, first_index: int = 0
    ) -> list[list[Completion]]:
        """``sampling.n`` completions for each prompt, in prompt order. ``first_index`` is the global index
        of ``prompts[0]`` (it selects the per-prompt seeds and is recorded in each completion)."""
        self._check_usable()
        if self._chunked_cpu and sampling.seed is not None:
            raise ValueError(
                "seeded sampling on vLLM's CPU backend needs chunked prefill off (vLLM rewinds a seeded "
                "generator after each partial prefill, which a CPU generator cannot do); remove "
                "enable_chunked_prefill=True from the engine kwargs, or sample without a seed"
            )
        ids = encode_prompts(self.tokenizer, list(prompts))
        params = [self._params(sampling, first_index + i) for i in range(len(ids))]
        outputs = self._llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False,
                                     lora_request=self._adapter)
        result = []
        for i, out in enumerate(outputs):
            group = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                logprobs = None
                if sampling.logprobs:
                    logprobs = tuple(float(lp[t].logprob) for lp, t in zip(c.logprobs, c.token_ids))
                group.append(
                    Completion(
                        prompt_index=first_index + i,
                        sample_index=c.index,
                        token_ids=tuple(c.token_ids),
                        text=c.text,
                        finish_reason=str(c.finish_reason),
                        logprobs=logprobs,
                        policy_version=self.version,
                    )
                )
            if sampling.greedy:  # vLLM refuses n > 1 when greedy; the samples would be identical anyway
                group = [replace(group[0], sample_index=j) for j in range(sampling.n)]
            result.append(group)
        return result

    def _params(self, s: Sampling, prompt_index: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=1 if s.greedy else s.n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_tokens=s.max_tokens,
            stop=list(s.stop) or None,
            stop_token_ids=list(s.stop_token_ids) or None,
            seed=s.prompt_seed(prompt_index),
            logprobs=0 if s.logprobs else None,
        )

    def probe_logps(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """For each token sequence, ``log p(token_t | tokens_<t)`` for t >= 1 (``len - 1`` values)."""
        from vllm import SamplingParams

        self._check_usable()
        for i, seq in enumerate(sequences):
            if len(seq) < 2:
                raise ValueError(f"probe sequence {i} has {len(seq)} tokens; at least 2 are needed")
        if self.lora is not None:  # an engine started for adapters, whether one is applied now or not
            return self._probe_prefixes(sequences)
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0, detokenize=False)
        outputs = self._llm.generate(
            [{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False
        )
        return [
            [float(pos[t].logprob) for pos, t in zip(out.prompt_logprobs[1:], seq[1:])]
            for out, seq in zip(outputs, sequences)
        ]

    def _probe_prefixes(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """``probe_logps`` on an engine started for adapters: a one-token request per position (module docstring)."""
        from vllm import SamplingParams

        prompts, params = [], []
        for seq in sequences:
            for t in range(1, len(seq)):
                prompts.append({"prompt_token_ids": list(seq[:t])})
                params.append(SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=[int(seq[t])],
                                             detokenize=False))
        outputs = iter(self._llm.generate(prompts, params, use_tqdm=False, lora_request=self._adapter))
        return [[float(next(outputs).outputs[0].logprobs[0][int(t)].logprob) for t in seq[1:]] for seq in sequences]

    # ------------------------------------------------------------------------------------ weights
    def load_buckets(self, blobs: Sequence[Any], version: int) -> str:
        """Verify every bucket, then load them all into the running engine. Returns the sync checksum.

        ``blobs`` are byte buffers (``bytes``, numpy ``uint8`` arrays); they are read, not copied.

        Raises :class:`~selfplay.sync.buckets.BucketError` (engine unchanged) on a corrupt, stale or
        incomplete sync.
        """
        start = time.perf_counter()
        named, digest = decode_sync(blobs, version, self._names)
        verified = time.perf_counter()
        # an engine in another process gets bytes (a copy each, unless a split bucket was joined: bytes(bytes))
        payload: list[Any] = named if self._in_process else [bytes(joined(b)) for b in blobs]
        try:
            self._llm.collective_rpc("selfplay_load_weights", args=(payload,))
        except Exception:
            self.version, self.checksum = BROKEN, None
            raise
        self._drop_adapter()  # the full weights are a merged policy, or a base whose adapter comes next
        self._llm.reset_prefix_cache()
        self.version, self.checksum = version, digest
        self.last_load = load_stats(blobs, version, verified - start, time.perf_counter() - verified)
        return digest

    def load_adapter(self, blobs: Sequence[Any], version: int) -> str:
        """Verify buckets of LoRA adapter tensors (PEFT names, exactly this model's targeted layers), then
        serve that adapter on the current base as ``version``. Returns the sync checksum.

        Raises :class:`~selfplay.sync.buckets.BucketError` (engine unchanged) on a corrupt, stale or
        incomplete adapter, and ``RuntimeError`` when the engine was not started for adapters."""
        from vllm.lora.request import LoRARequest

        if self.lora is None:
            raise RuntimeError("this engine serves no LoRA adapters (started without lora=AdapterSpec); "
                               "push merged weights (sync.lora: merged)")
        start = time.perf_counter()
        named, digest = decode_sync(blobs, version, self._adapter_names)
        verified = time.perf_counter()
        if self._adapter_root is None:  # this process's adapter directories, removed when it exits
            import atexit
            import tempfile

            self._adapter_root = Path(tempfile.mkdtemp(prefix="selfplay-adapters-"))
            atexit.register(shutil.rmtree, self._adapter_root, True)
        self._adapter_ids += 1
        path = write_adapter_dir(self._adapter_root / f"v{version}-{self._adapter_ids}", named, self.lora)
        request = LoRARequest(f"selfplay-v{version}-{self._adapter_ids}", self._adapter_ids, str(path))
        self._drop_adapter()
        try:
            if not self._llm.llm_engine.add_lora(request):
                raise RuntimeError(f"vLLM refused the adapter of version {version} ({path})")
        except Exception:
            self.version, self.checksum = BROKEN, None
            raise
        self._adapter = request
        self._llm.reset_prefix_cache()
        self.version, self.checksum = version, digest
        self.last_load = {**load_stats(blobs, version, verified - start, time.perf_counter() - verified),
                          "adapter": True}
        return digest

    def _drop_adapter(self) -> None:
        """Stop serving the current adapter and forget its files (vLLM holds its own copy once added)."""
        if self._adapter is None:
            return
        self._llm.llm_engine.remove_lora(self._adapter.lora_int_id)
        shutil.rmtree(self._adapter.lora_path, ignore_errors=True)
        self._adapter = None

    def _check_usable(self) -> None:
        if self.version == BROKEN:
            raise RuntimeError("this engine's last weight load failed part way; it needs a new sync")

    def info(self) -> dict[str, Any]:
        """``engine_info``, plus ``adapter``: whether a LoRA adapter is served on top of the base."""
        return {**engine_info(self), "adapter": self._adapter is not None}
