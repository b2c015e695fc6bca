"""Where each iteration's prompts come from (fresh slices, SPIN's fixed set, a file per iteration) and
the generation-only prompt format, through ``stages.sample_prompts`` with a real dataset task."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from selfplay.config import ConfigError, load_config
from selfplay.loop.factory import build_task_from_config
from selfplay.loop.prompt_source import generation_view
from selfplay.loop.stages import sample_prompts
from selfplay.tasks.base import Example


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def files(tmp_path):
    main = write_jsonl(tmp_path / "main.jsonl", [{"prompt": f"main question {i}?"} for i in range(40)])
    per_iter = [write_jsonl(tmp_path / f"iter{k}.jsonl", [{"prompt": f"iteration {k} question {i}?"}
                                                         for i in range(6 + k)]) for k in range(3)]
    return main, per_iter


def runtime(main, **generation):
    recipe = {"policy": {"preset": "nano"}, "iterations": 3, "seed": 1,
              "task": {"type": "dataset", "path": main, "eval_fraction": 0.1},
              "judge": {"type": "reward_model", "path": "/m"},
              "generation": {"prompts_per_iteration": 8, **generation}}
    cfg = load_config(recipe)
    return SimpleNamespace(cfg=cfg, task=build_task_from_config(cfg))


def texts(examples):
    return [e.prompt for e in examples]


def test_fresh_slices_are_disjoint_and_fixed_repeats_the_first(files):
    main, _ = files
    fresh = runtime(main)
    slices = [texts(sample_prompts(fresh, k)) for k in range(3)]
    assert all(len(s) == 8 for s in slices) and len(set(sum(slices, []))) == 24
    fixed = runtime(main, prompt_source="fixed")
    same = [texts(sample_prompts(fixed, k)) for k in range(3)]
    assert same[0] == same[1] == same[2] == slices[0]  # SPIN: one prompt set, regenerated every iteration


def test_files_give_each_iteration_its_own_prompt_file(files):
    main, per_iter = files
    rt = runtime(main, prompt_source="files", prompt_files=per_iter)
    for k in range(3):
        got = texts(sample_prompts(rt, k))
        assert len(got) == min(8, 6 + k) and all(t.startswith(f"iteration {k} ") for t in got)
    assert texts(sample_prompts(rt, 2)) == texts(sample_prompts(rt, 2))  # the judge stage sees the same ones
    with pytest.raises(ConfigError, match="prompt_files: 2 file"):
        runtime(main, prompt_source="files", prompt_files=per_iter[:2])
    with pytest.raises(ConfigError, match="exactly when prompt_source is `files`"):
        runtime(main, prompt_files=per_iter)


def test_generation_template_is_for_sampling_only(files):
    main, _ = files
    rt = runtime(main, prompt_template="### Instruction: {prompt}\n\n### Response: ")
    examples = sample_prompts(rt, 0)
    shown = generation_view(examples, rt.cfg.generation.prompt_template)
    assert [e.id for e in shown] == [e.id for e in examples]
    assert shown[0].prompt == f"### Instruction: {examples[0].prompt}\n\n### Response: "
    assert examples[0].prompt.startswith("main question")  # what the pairs and the learner keep
    chat = Example("c", [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}])
    assert generation_view([chat], "Q: {prompt} A:")[0].prompt == "Q: hi A:"  # the user turn's content
    assert generation_view(examples, None) is examples
    with pytest.raises(ConfigError, match=r"prompt_template: must contain \{prompt\}"):
        runtime(main, prompt_template="### Instruction:")
