"""Where each iteration's prompts come from (``generation.prompt_source``), and the generation-only
prompt format (``generation.prompt_template``).

The published recipes differ here, so it is a setting rather than a fixed rule:

* ``fresh`` (the default): iteration k takes slice k of one seeded permutation of the task's training
  split; iterations see disjoint prompts until the split is used up. ``stages.sample_prompts`` does this.
* ``fixed``: the same first slice every iteration. SPIN regenerates responses to one fixed 50k prompt set
  at every iteration.
* ``files``: iteration k reads ``generation.prompt_files[k]`` with the task's columns (RLHFlow's
  ``iterative-prompt-v1-iter{k}-20K``, SPPO's ``data-...-sppo-iter{k}``). All its rows are used, up to
  ``prompts_per_iteration`` (a seeded sample when the file holds more).

``iteration_prompts`` returns ``None`` for ``fresh`` so the caller keeps its own rule; it never changes
which prompts ``fresh`` picks. ``generation_view`` renders SPIN's "### Instruction: ... ### Response:"
style for sampling only: the examples that reach the generations table (and so the pairs, training and
evaluation) keep the task's prompt, which the learner encodes with the chat template.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any


def iteration_prompts(rt: Any, k: int) -> list | None:
    """Iteration ``k``'s training prompts under ``fixed`` or ``files``; ``None`` for ``fresh``."""
    gen = rt.cfg.generation
    if gen.prompt_source == "fresh":
        return None
    if gen.prompt_source == "fixed":
        pool = rt.task.train_examples(None, seed=rt.cfg.seed)
        if not pool:
            raise ValueError("the task returned no training prompts")
        order = list(range(len(pool)))
        random.Random(rt.cfg.seed).shuffle(order)
        return [pool[i] for i in order[: gen.prompts_per_iteration]]
    return file_prompts(rt.cfg, k)


def file_prompts(cfg: Any, k: int) -> list:
    """The prompts of ``generation.prompt_files[k]``, read with the ``dataset`` task's columns."""
    from selfplay.tasks.dataset import DatasetTask

    files = cfg.generation.prompt_files
    if k >= len(files):
        raise ValueError(f"generation.prompt_files: no file for iteration {k} ({len(files)} given)")
    t = cfg.task
    task = DatasetTask(files[k], prompt_column=t.prompt_column, reference_column=t.reference_column,
                       id_column=t.id_column, eval_fraction=0.0)
    pool = task.train_examples(None)
    n = cfg.generation.prompts_per_iteration
    return pool if len(pool) <= n else task.train_examples(n, seed=cfg.seed + k)


def template_text(prompt: str | list[dict[str, str]]) -> str:
    """What ``{prompt}`` stands for: the text itself, or the last user message's content (SPIN formats
    the user turn's content; system turns and earlier history are not part of its template)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise ValueError("generation.prompt_template: a chat prompt without a user message has no {prompt}")
    return users[-1]


def generation_view(examples: list, template: str | None) -> list:
    """``examples`` as the generator should see them: unchanged, or with ``template`` rendered around
    each prompt's text (a plain string, so no chat template is applied to it)."""
    if template is None:
        return examples
    return [replace(ex, prompt=template.format(prompt=template_text(ex.prompt))) for ex in examples]
