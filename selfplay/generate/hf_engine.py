"""The same engine interface on transformers ``generate``: the ``hf`` backend and the tests' reference.

It serves where vLLM is not installed (``generation.backend: hf``) and is the ground truth the vLLM
engine is checked against (greedy tokens, probe log-probs). It also implements the learner side of a
sync (``export_weights``) so tests and benchmarks can push weights from a plain HF model.

Choices:

* ``batch_size`` prompts are generated together with left padding. ``batch_size=1`` gives
  padding-free, bit-for-bit reference outputs (what the equivalence tests use).
* Per-prompt seeds (:meth:`Sampling.prompt_seed`) seed torch's RNG before each batch of one prompt's
  samples, under ``fork_rng`` so the caller's RNG is untouched. Seeded runs are reproducible; they do
  not reproduce vLLM's samples (different samplers), only greedy outputs match.
* Log-probs are computed from raw logits (``output_logits``), like vLLM's default.
* New tokens are capped per prompt (``min(max_tokens, max_model_len - prompt length)``), never by the
  longest prompt of a batch, so a completion does not depend on the prompts batched with it: prompts
  whose caps differ (only near ``max_model_len``) are generated in separate batches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from selfplay.generate.types import Completion, Sampling, cut_at_stop, encode_prompts, engine_info
from selfplay.generate.weights import decode_sync, load_stats


class HFEngine:
    backend = "hf"

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: Any = None,
        max_model_len: int | None = None,
        version: int = 0,
        batch_size: int = 8,
    ):
        from selfplay.models import load_policy

        self.model_path = Path(model_path)
        self.model, self.tokenizer = load_policy(model_path, dtype=dtype)
        self.model.eval()
        self.max_model_len = max_model_len or self.model.config.max_position_embeddings
        self.vocab_size = self.model.config.vocab_size
        self.batch_size = batch_size
        self.version = version
        self.checksum: str | None = None
        self.last_load: dict[str, Any] | None = None
        self._eos = self.model.generation_config.eos_token_id
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._eos

    # ------------------------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[Any], sampling: Sampling, first_index: int = 0
    ) -> list[list[Completion]]:
        ids = encode_prompts(self.tokenizer, list(prompts))
        out: list[list[Completion]] = []
        if sampling.seed is not None and not sampling.greedy:
            batches = [[i] for i in range(len(ids))]  # one prompt per RNG state: order-independent samples
        else:
            batches = [
                list(range(s, min(s + self.batch_size, len(ids))))
                for s in range(0, len(ids), self.batch_size)
            ]
        for batch in batches:
            seed = sampling.prompt_seed(first_index + batch[0])
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                out.extend(self._generate_batch([ids[i] for i in batch], sampling, first_index + batch[0]))
        return out

    def _generate_batch(self, ids: list[list[int]], s: Sampling, first: int) -> list[list[Completion]]:
        # Each prompt's own cap (as vLLM applies it): a long batch-mate must not shorten a short prompt's
        # completion. Only prompts of equal cap are generated together, so no row runs past its own cap
        # (nor past max_model_len); near the limit a batch splits into a few smaller ones.
        caps = [min(s.max_tokens, self.max_model_len - len(x)) for x in ids]
        for p, cap in enumerate(caps):
            if cap < 1:
                raise ValueError(
                    f"prompt {first + p} has {len(ids[p])} tokens: no room under max_model_len={self.max_model_len}"
                )
        result: list[list[Completion]] = [[] for _ in ids]
        for cap in sorted(set(caps), reverse=True):
            rows = [p for p, c in enumerate(caps) if c == cap]
            groups = self._generate_rows([ids[p] for p in rows], s, cap, [first + p for p in rows])
            for p, group in zip(rows, groups, strict=True):
                result[p] = group
        return result

    def _generate_rows(
        self, ids: list[list[int]], s: Sampling, max_new: int, indices: list[int]
    ) -> list[list[Completion]]:
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[self._pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        copies = 1 if s.greedy else s.n  # greedy samples are identical: decode once, repeat
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new,
            num_return_sequences=copies,
            pad_token_id=self._pad,
            eos_token_id=self._stop_ids(s),
            return_dict_in_generate=True,
            output_logits=s.logprobs,
        )
        if s.greedy:
            kwargs.update(do_sample=False, top_k=None, top_p=None, temperature=None)
        else:
            kwargs.update(
                do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else 0
            )
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
        gen = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        new = gen.sequences[:, width:]
        logps = None
        if s.logprobs:
            logits = torch.stack(gen.logits, dim=1).float()
            logps = torch.log_softmax(logits, -1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        result = []
        for p in range(len(ids)):
            group = []
            for j in range(s.n):
                row = p * copies + (j if copies > 1 else 0)
                group.append(
                    self._completion(
                        new[row].tolist(), None if logps is None else logps[row].tolist(), s, indices[p], j
                    )
                )
            result.append(group)
        return result

    def _stop_ids(self, s: Sampling) -> list[int]:
        """EOS id(s) of the model and ``stop_token_ids``: generation ends at (and keeps) any of them."""
        eos = [self._eos] if isinstance(self._eos, int) else list(self._eos or [])
        return eos + [t for t in s.stop_token_ids if t not in eos]

    def _completion(
        self, tokens: list[int], logps: list[float] | None, s: Sampling, index: int, j: int
    ) -> Completion:
        # Rows that finished early are padded by ``generate``: cut at the first EOS (kept) or at the first
        # prefix whose text holds a stop string (the token completing it kept, as vLLM does).
        eos = set(self._stop_ids(s))
        end = next((k + 1 for k, t in enumerate(tokens) if t in eos), None)
        finish = "stop" if end is not None else "length"
        tokens = tokens[:end] if end is not None else tokens
        if s.stop and cut_at_stop(self._decode(tokens), s.stop)[1]:
            lo, hi = 1, len(tokens)  # smallest prefix holding a stop string (containment is monotone)
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if cut_at_stop(self._decode(tokens[:mid]), s.stop)[1] else (mid + 1, hi)
            tokens, finish = tokens[:lo], "stop"
        text = cut_at_stop(self._decode(tokens), s.stop)[0]
        return Completion(
            index,
            j,
            tuple(tokens),
            text,
            finish,
            None if logps is None else tuple(logps[: len(tokens)]),
            self.version,
        )

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @torch.inference_mode()
    def probe_logps(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """For each token sequence, ``log p(token_t | tokens_<t)`` for t >= 1 (one forward per sequence)."""
        out = []
        for i, seq in enumerate(sequences):
            if len(seq) < 2:
                raise ValueError(f"probe sequence {i} has {len(seq)} tokens; at least 2 are needed")
            x = torch.tensor([list(seq)])
            logits = self.model(input_ids=x).logits.float()
            lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, x[0, 1:, None]).squeeze(-1)
            out.append(lp.tolist())
        return out

    # ------------------------------------------------------------------------------------ weights
    def load_buckets(self, blobs: Sequence[Any], version: int) -> str:
        """Verify every bucket, then ``load_state_dict`` them (a copy into the model's own parameters:
        the verified tensors are views into ``blobs``; only tied aliases may be absent). Engine unchanged
        on error."""
        start = time.perf_counter()
        named, digest = decode_sync(blobs, version, [n for n, _ in self.named_weights()])
        verified = time.perf_counter()
        missing, unexpected = self.model.load_state_dict(dict(named), strict=False)
        if unexpected or set(missing) - self._tied_names():  # pragma: no cover - decode_sync checked names
            raise RuntimeError(f"weight load: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.version, self.checksum = version, digest
        self.last_load = load_stats(blobs, version, verified - start, time.perf_counter() - verified)
        return digest

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Weights under the names a checkpoint and the learner use: each parameter once (a tied
        ``lm_head.weight`` is the embedding, and is not sent twice), then the persistent buffers."""
        persistent = set(self.model.state_dict())
        yield from ((n, p.detach()) for n, p in self.model.named_parameters())
        yield from ((n, b) for n, b in self.model.named_buffers() if n in persistent)

    def _tied_names(self) -> set[str]:
        return set(self.model.state_dict()) - {n for n, _ in self.named_weights()}

    def export_weights(self, bucket_mb: float = 64.0, version: int = 0) -> list[bytes]:
        """The learner-side call of a sync: this model's weights packed into buckets."""
        from selfplay.sync.buckets import pack_buckets

        return list(pack_buckets(self.named_weights(), bucket_mb, version))

    def info(self) -> dict[str, Any]:
        return engine_info(self)
