"""Judges turn sampled responses into scores: ``prompts -> generate -> [judge] -> pairs -> train``.

``Judge`` (``base.py``) is one method, ``score(groups) -> list[list[float | None]]``; ``build_judge``
(``factory.py``) builds the configured one. Kinds: ``verifier`` and ``sft`` (``rules.py``),
``reward_model`` (``reward_model.py``, trained with ``train_rm.py``), ``pairwise`` (``pairwise.py``),
``llm_judge`` (``llm_judge.py``) and ``python`` (``python_judge.py``). ``judge_table`` scores a
generations table into a judgments table. Importing this package imports no torch, Ray or vLLM.
"""

from selfplay.judges.base import (
    Judge,
    JudgeError,
    PromptGroup,
    judge_table,
    run_judge,
    validate_scores,
)
from selfplay.judges.compare import win_rates
from selfplay.judges.factory import build_judge
from selfplay.judges.llm_judge import DEFAULT_TEMPLATE, LLMJudge, parse_verdict
from selfplay.judges.rules import SFTJudge, VerifierJudge, normalize_whitespace
from selfplay.records import decode_prompt  # the table encoding lives in selfplay.records

__all__ = [
    "DEFAULT_TEMPLATE",
    "Judge",
    "JudgeError",
    "LLMJudge",
    "PromptGroup",
    "SFTJudge",
    "VerifierJudge",
    "build_judge",
    "decode_prompt",
    "judge_table",
    "normalize_whitespace",
    "parse_verdict",
    "run_judge",
    "validate_scores",
    "win_rates",
]
