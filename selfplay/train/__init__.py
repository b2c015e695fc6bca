"""The learner: the ``train`` stage of every iteration (DPO-family, KTO, TDPO, ORPO rounds; SFT warm start).

``Learner`` owns one DeepSpeed engine (one rank); ``actors/learner.py`` runs W of them as Ray actors.
Modules: ``family`` (the loss's objective family: reference columns, encoding, per-step hook, micro-batch
loss), ``variant`` (full fine-tuning or LoRA, mechanics in ``lora``), ``data`` (pairs -> token ids),
``batches`` (seeded, length-bucketed plan; collation), ``objective`` (one micro-batch -> loss),
``reference`` (reference log-prob columns), ``engine`` (DeepSpeed setup), ``checkpoint`` (export, HF
directory, resumable checkpoints), ``rounds`` (per-round settings and records), ``schedule`` (LR),
``metrics`` (jsonl + TensorBoard).

Importing this package does not import DeepSpeed, Ray or vLLM; DeepSpeed is imported when a ``Learner``
is constructed.
"""

from selfplay.train.learner import Learner
from selfplay.train.step import NonFiniteError

__all__ = ["Learner", "NonFiniteError"]
