"""LLM-as-a-judge: verdict parsing of messy outputs, and both-order position-bias cancellation.

The "LLM" here is a deterministic function of the judge prompt: it is the judge's input, not a part of
selfplay being mocked. The judge prompt is parsed back to (a, b) to decide the fake verdict.
"""

from __future__ import annotations

import re

import pytest
from judge_helpers import train_to_answer_b

from selfplay.config.schema import LLMJudgeConfig
from selfplay.judges import DEFAULT_TEMPLATE, LLMJudge, PromptGroup, build_judge, judge_table, parse_verdict

VERDICTS = [
    ("A", "A"), ("B", "B"), ("b", "B"), ("a", "A"), ("A.", "A"), ("  B!\n", "B"), ("**A**", "A"),
    ("Answer: B", "B"), ("answer: a", "A"), ("Verdict: (b)", "B"), ("[[A]]", "A"),
    ("I think response B is better", "B"), ("The better response is A.", "A"), ("I prefer b.", "B"),
    ("Final verdict: **B**", "B"), ("Output (B) wins", "B"), ("A is better than B", "A"), ("B > A", "B"),
    ("The winner is A!", "A"), ("Answer: A\n\nExplanation: B is too short", "A"),
    ("Answer: (a) because it is right", "A"),
    # unparseable: both letters, neither, or only the article "a"
    ("A and B", None), ("Neither A nor B", None), ("", None), (None, None), ("I cannot decide.", None),
    ("Both are equally good", None), ("The answer is a tie", None), ("It is a good answer", None),
    ("Response A is worse than Response B", None),
]


@pytest.mark.parametrize("output, expected", VERDICTS)
def test_parse_verdict(output, expected):
    assert parse_verdict(output) == expected


def split_prompt(prompt: str) -> tuple[str, str]:
    m = re.search(r"\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)\n\nReply", prompt, re.S)
    assert m, prompt
    return m.group(1), m.group(2)


def longer_wins(prompts: list[str]) -> list[str]:
    """A consistent judge: prefers the longer response, whatever its position; messy formatting."""
    out = []
    for p in prompts:
        a, b = split_prompt(p)
        out.append("**A**" if len(a) > len(b) else "I think response B is better.")
    return out


def always_a(prompts: list[str]) -> list[str]:
    """A judge with pure position bias."""
    return ["Answer: A"] * len(prompts)


GROUP = PromptGroup("p", "Say something", ["xxx", "x", "xx"])


def test_consistent_judge_gives_win_rates():
    judge = LLMJudge(longer_wins)
    assert judge.score([GROUP]) == [[1.0, 0.0, 0.5]]
    assert judge.stats == {"verdicts": 6, "unparseable": 0, "first_position_wins": 3}


def test_position_bias_cancels_with_both_orders():
    judge = LLMJudge(always_a)
    assert judge.score([GROUP]) == [[0.5, 0.5, 0.5]]
    assert judge.stats["first_position_wins"] == 6
    one_order = LLMJudge(always_a, both_orders=False)
    # asked once each as (0,1), (0,2), (1,2): the first-shown sample always "wins"
    assert one_order.score([GROUP]) == [[1.0, 0.5, 0.0]]


def test_unparseable_verdicts_are_counted_not_guessed():
    def shy_about_x(prompts):  # refuses whenever the single "x" is shown
        return ["hmm, A and B" if "x" in split_prompt(p) else longer_wins([p])[0] for p in prompts]

    judge = LLMJudge(shy_about_x)
    assert judge.score([GROUP]) == [[1.0, None, 0.0]]  # only xxx-vs-xx decided
    assert judge.stats["unparseable"] == 4 and judge.stats["verdicts"] == 6
    table_judge = LLMJudge(lambda ps: ["?"] * len(ps), name="llm_judge:fake")
    import pyarrow as pa

    gens = pa.Table.from_pylist([{"prompt_id": "p", "prompt": "Q", "reference": None, "sample_index": k,
                                  "response": r} for k, r in enumerate(["u", "v"])])
    judged, stats = judge_table(gens, table_judge)
    assert judged.column("score").to_pylist() == [None, None]
    assert stats["unscored"] == 2 and stats["unparseable"] == 2


def test_template_fill_and_factory():
    seen = []

    def record(prompts):
        seen.extend(prompts)
        return ["A"] * len(prompts)

    cfg = LLMJudgeConfig(type="llm_judge", path="/models/judge-7b", template="Q={prompt} 1={a} 2={b} {x}")
    judge = build_judge(cfg, complete=record)
    assert judge.name == "llm_judge:judge-7b"
    judge.score([PromptGroup("p", "use {a}", ["r{b}", "s"])])
    assert seen == ["Q=use {a} 1=r{b} 2=s {x}", "Q=use {a} 1=s 2=r{b} {x}"]  # braces in text left alone
    with pytest.raises(ValueError, match=r"missing placeholder\(s\) \{b\}"):
        LLMJudge(record, template="{prompt} {a}")
    with pytest.raises(ValueError, match="needs an engine serving '/models/judge-7b'"):
        build_judge(cfg)
    assert "{prompt}" in DEFAULT_TEMPLATE and '"A" or "B"' in DEFAULT_TEMPLATE


def test_engine_adapter_drives_a_real_generator(tiny_model_dir):
    """``engine_complete`` over the transformers engine, with the nano policy trained (in-process, 40 Adam
    steps) to answer every judge prompt with ``Verdict: B``: a real model whose verdicts parse. The expected
    scores are written out, not recomputed with the library: a judge that always prefers the second-shown
    response is position-biased, so with both orders every sample scores 0.5; asked in one order only,
    (0,1), (0,2), (1,2), the later sample always wins."""
    from selfplay.generate import make_engine
    from selfplay.judges.llm_judge import engine_complete, fill_template

    engine = make_engine("hf", tiny_model_dir, dtype="float32", max_model_len=512)
    tok, model = engine.tokenizer, engine.model
    train = [fill_template(DEFAULT_TEMPLATE, f"{i}+{i}=", str(2 * i), str(i)) for i in range(6)]
    train_to_answer_b(model, tok, train, steps=40)

    complete = engine_complete(engine, max_tokens=16)
    texts = [fill_template(DEFAULT_TEMPLATE, "7+5=", "12", "75"), fill_template(DEFAULT_TEMPLATE, "7+5=", "75", "12")]
    outputs = complete(texts)
    assert outputs == ["Verdict: B"] * 2, outputs  # prompts it was not trained on
    assert complete(texts) == outputs  # greedy
    judge = build_judge(LLMJudgeConfig(type="llm_judge", path=str(tiny_model_dir), max_tokens=16), engine=engine)
    group = PromptGroup("p", "7+5=", ["12", "75", "13"])
    assert judge.score([group]) == [[0.5, 0.5, 0.5]]
    assert judge.stats == {"verdicts": 6, "unparseable": 0, "first_position_wins": 0}
    one_order = build_judge(LLMJudgeConfig(type="llm_judge", path=str(tiny_model_dir), max_tokens=16,
                                           both_orders=False), engine=engine)
    assert one_order.score([group]) == [[0.0, 0.5, 1.0]]
