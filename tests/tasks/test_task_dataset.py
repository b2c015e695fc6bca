"""Dataset tasks from parquet, jsonl and save_to_disk folders; malformed rows name file, row, column."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfplay.tasks import DatasetTask, NoVerifierError, Task, build_task

TEXT_ROWS = [{"prompt": f"question {i}?", "reference": f"answer {i}", "topic": "q"} for i in range(20)]
CHAT_ROWS = [
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"hi {i}"}],
     "uid": f"u{i}"}
    for i in range(10)
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet], ids=["jsonl", "parquet"])
def test_text_prompts_with_held_out_fraction(tmp_path, writer):
    path = writer(tmp_path / f"qa.{'jsonl' if writer is write_jsonl else 'parquet'}", TEXT_ROWS)
    task = build_task("dataset", path=str(path), reference_column="reference", eval_fraction=0.25)
    assert isinstance(task, Task) and not task.has_verifier
    train, evals = task.train_examples(), task.eval_examples()
    assert len(train) == 15 and len(evals) == 5
    assert not {e.id for e in train} & {e.id for e in evals}
    assert {e.id for e in train} | {e.id for e in evals} == {f"qa-{i}" for i in range(20)}
    ex = train[0]
    assert ex.prompt == TEXT_ROWS[ex.meta["row"]]["prompt"] and ex.reference.startswith("answer")
    assert ex.meta["topic"] == "q" and ex.meta["source"] == str(path)
    # the split depends on split_seed only; the seed of train_examples picks a subset
    again = DatasetTask(path, reference_column="reference", eval_fraction=0.25)
    assert again.eval_examples() == evals
    assert DatasetTask(path, eval_fraction=0.25, split_seed=1).eval_examples() != evals
    sample = task.train_examples(5, seed=7)
    assert sample == task.train_examples(5, seed=7) and len(sample) == 5
    assert [e.meta["row"] for e in sample] == sorted(e.meta["row"] for e in sample)
    with pytest.raises(ValueError, match="has 15 examples; cannot take n=16"):
        task.train_examples(16)
    with pytest.raises(NoVerifierError, match="no verifier"):
        task.score(ex, "anything")


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet], ids=["jsonl", "parquet"])
def test_chat_prompts_with_separate_eval_file(tmp_path, writer):
    ext = "jsonl" if writer is write_jsonl else "parquet"
    train_path = writer(tmp_path / f"train.{ext}", CHAT_ROWS[:8])
    eval_path = writer(tmp_path / f"test.{ext}", CHAT_ROWS[8:])
    task = DatasetTask(train_path, prompt_column="messages", id_column="uid", eval_path=eval_path)
    assert [e.id for e in task.train_examples()] == [f"u{i}" for i in range(8)]
    assert [e.id for e in task.eval_examples()] == ["u8", "u9"]
    assert task.eval_examples()[1].prompt == CHAT_ROWS[9]["messages"]
    assert task.train_examples()[0].reference is None


def test_save_to_disk_folder_with_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    dd = DatasetDict({"train": Dataset.from_list(TEXT_ROWS[:12]), "test": Dataset.from_list(TEXT_ROWS[12:])})
    dd.save_to_disk(str(tmp_path / "ds"))
    task = DatasetTask(tmp_path / "ds", split="train", eval_split="test")
    assert len(task.train_examples()) == 12 and len(task.eval_examples()) == 8
    assert task.eval_examples()[0].id == "ds.test-0" and task.eval_examples()[0].prompt == "question 12?"
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\]; set split="):
        DatasetTask(tmp_path / "ds", split="validation")


BAD_ROWS = [
    ({"text": "x"}, r"row 2: column 'prompt' is missing"),
    ({"prompt": "   "}, r"row 2: column 'prompt': empty prompt"),
    ({"prompt": 42}, r"row 2: column 'prompt': must be a string or a list of chat messages, got int"),
    ({"prompt": []}, r"row 2: column 'prompt': empty list of chat messages"),
    ({"prompt": [{"role": "robot", "content": "x"}]}, r"row 2: column 'prompt': message 0 must be"),
    ({"prompt": "ok", "reference": 5}, r"row 2: column 'reference' must be a string or null, got int"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ROWS)
def test_malformed_rows_name_file_row_and_column(tmp_path, bad, message):
    good = {"prompt": "fine", "reference": "r"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, {"prompt": "no reference: fine"}, bad])
    with pytest.raises(ValueError, match=rf"bad\.jsonl: {message}"):
        DatasetTask(path, reference_column="reference")


def test_malformed_files(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl: row 1 \(line 3\) is not valid JSON"):
        DatasetTask(path)
    write_jsonl(path, [{"prompt": "a", "id": "k"}, {"prompt": "b", "id": "k"}])
    with pytest.raises(ValueError, match=r"row 1: column 'id': id 'k' repeats row 0"):
        DatasetTask(path, id_column="id")
    pq_path = write_parquet(tmp_path / "p.parquet", [{"question": "a"}])
    with pytest.raises(ValueError, match=r"p\.parquet: row 0: column 'prompt' is missing"):
        DatasetTask(pq_path)
    with pytest.raises(ValueError, match=r"column 'answer' \(reference_column\) is in no row"):
        DatasetTask(pq_path, prompt_column="question", reference_column="answer")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        DatasetTask(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("prompt\na\n")
    with pytest.raises(ValueError, match="unsupported format"):
        DatasetTask(tmp_path / "x.csv")


def test_sft_layout_conversations_give_prompt_and_reference(tmp_path):
    """TRL's conversational SFT rows (``messages`` ending with the assistant's reply)."""
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hi {i}"},
                          {"role": "assistant", "content": f"Hello {i}"}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}]} for i in range(10)]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = DatasetTask(path, prompt_column="messages", eval_fraction=0.2)
    for ex in task.train_examples() + task.eval_examples():
        assert ex.reference == "4" and len(ex.prompt) == 4 and ex.prompt[-1] == {"role": "user", "content": "2+2?"}
