"""One clear message per bad input, through the real command line (`selfplay.cli.main`).

Every case breaks one input the way a user would, runs the command, and checks that it

* exits non-zero with one message that names the file, row or field and what is allowed (the
  ``expect`` substrings), and no traceback;
* loses nothing: every file that existed before the command is unchanged after it;
* resumes once the input is fixed: the same command (``prepare``, ``status``, ...) then exits 0.

The checks are the cheap ones (recipe loading, preflight, run-directory and artifact readers), so no
case starts Ray or an engine: ``prepare`` with ``evaluation.num_prompts: 0`` on a local model directory
only opens the run directory. docs/errors.md lists these cases with the messages a user sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from selfplay.cli import main


@dataclass
class Env:
    tmp: Path
    model: Path  # a private copy of the nano policy

    @property
    def recipe(self) -> Path:
        return self.tmp / "recipe.yaml"

    @property
    def run(self) -> Path:
        return self.tmp / "run"

    def base(self, **changes) -> dict:
        recipe = {
            "name": "bad-inputs",
            "iterations": 1,
            "policy": {"path": str(self.model)},
            "task": {"type": "arithmetic", "level": 1},
            "generation": {"backend": "hf", "prompts_per_iteration": 8, "n": 2, "max_tokens": 6,
                           "max_model_len": 64},
            "judge": {"type": "verifier"},
            "evaluation": {"num_prompts": 0},
        }
        for key, value in changes.items():
            node = recipe
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            if value is _DELETE:
                node.pop(leaf, None)
            else:
                node[leaf] = value
        return recipe

    def write(self, recipe: dict | str) -> list[str]:
        text = recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False)
        self.recipe.write_text(text)
        return ["prepare", str(self.recipe), "--run-dir", str(self.run)]

    def jsonl(self, name: str, rows: list) -> Path:
        path = self.tmp / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    def plugin(self, module: str, body: str) -> str:
        (self.tmp / f"{module}.py").write_text("from selfplay.tasks import ArithmeticTask, Example\n\n" + body)
        return module

    def prepared(self) -> list[str]:
        """A run directory that `prepare` made (no Ray: no warm start, no evaluation)."""
        argv = self.write(self.base())
        assert main(argv) == 0
        return argv


_DELETE = object()


def _then(*steps, ret: int = -1):
    """Run steps for their effects (in order, as arguments are) and return one of them (the last)."""
    return steps[ret]


@dataclass
class Case:
    id: str
    make: Callable[[Env], list[str]]
    expect: tuple[str, ...]
    fix: Callable[[Env], list[str]]


def _dataset(env: Env, rows: list, **task) -> list[str]:
    path = env.jsonl("data.jsonl", rows)
    recipe = env.base(**{"task": {"type": "dataset", "path": str(path), "reference_column": "answer", **task},
                         "judge": {"type": "sft"}})
    return env.write(recipe)


GOOD_ROWS = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(12)]


def _latin1(env: Env) -> list[str]:
    argv = _dataset(env, GOOD_ROWS)
    data = env.tmp / "data.jsonl"
    lines = data.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"What", b"Caf\xe9: what")  # Latin-1 e-acute
    data.write_bytes(b"\n".join(lines))
    return argv


def _model_edit(env: Env, edit: Callable[[Path], None]) -> list[str]:
    edit(env.model)
    return env.write(env.base())


def _config_edit(**changes) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        cfg = json.loads((model / "config.json").read_text())
        cfg.update(changes)
        (model / "config.json").write_text(json.dumps(cfg))
    return edit


def _truncate(model: Path) -> None:
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _restore_model(env: Env) -> list[str]:
    shutil.rmtree(env.model)
    shutil.copytree(env.tmp.parent / "nano-original", env.model)
    return env.write(env.base())


def _good(env: Env) -> list[str]:
    return env.write(env.base())


def _python_task(env: Env, module: str, body: str) -> list[str]:
    env.plugin(module, body)
    return env.write(env.base(**{"task": {"type": "python", "target": f"{module}:make"}}))


def _fixed_plugin(module: str) -> Callable[[Env], list[str]]:
    def fix(env: Env) -> list[str]:
        return _python_task(env, module + "_ok", "def make():\n    return ArithmeticTask(level=1)\n")
    return fix


def _make_read_only(env: Env) -> list[str]:
    env.run.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(env.run)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr: cannot make a directory read-only")
    else:
        env.run.chmod(0o555)
    return env.write(env.base())


def _unlock(env: Env) -> list[str]:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(env.run)], check=True)
    else:
        env.run.chmod(0o755)
    return env.write(env.base())


def _status(env: Env) -> list[str]:
    return ["status", str(env.run)]


def _damage_eval(env: Env) -> list[str]:
    env.prepared()
    (env.run / "initial" / "eval.json").write_text('{"version": 0, "num_pro')
    return _status(env)


def _fix_eval(env: Env) -> list[str]:
    (env.run / "initial" / "eval.json").write_text('{"version": 0, "num_prompts": 0}\n')
    return _status(env)


def _metrics_run(env: Env, lines: list[str]) -> list[str]:
    """A prepared run whose iteration 0 is mid-train, with this train_metrics.jsonl."""
    env.prepared()
    manifest = json.loads((env.run / "manifest.json").read_text())
    manifest["iterations"]["0"] = {"stages": {"generate": {"seconds": 1.0}}, "complete": False}
    (env.run / "manifest.json").write_text(json.dumps(manifest))
    (env.run / "iter_000").mkdir()
    (env.run / "iter_000" / "train_metrics.jsonl").write_text("\n".join(lines))
    return ["report", str(env.run), "--out", str(env.tmp / "report")]


STEP = json.dumps({"round": 0, "epoch": 0, "step": 1, "loss": 0.69})


def _fix_metrics(env: Env) -> list[str]:
    (env.run / "iter_000" / "train_metrics.jsonl").write_text(STEP + "\n" + STEP + "\n")
    return ["report", str(env.run), "--out", str(env.tmp / "report")]


def _changed_input(env: Env) -> list[str]:
    argv = env.prepared()
    cfg = env.model / "config.json"
    cfg.write_text(cfg.read_text().replace("{", '{"torch_dtype_note": "edited",', 1))
    return argv


def _rm_pairs(env: Env) -> list[str]:
    return ["train-rm", str(env.tmp / "missing.parquet"), "--base", str(env.model), "--out", str(env.tmp / "rm")]


def _rm_bad_base(env: Env) -> list[str]:
    pairs = env.jsonl("pairs.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    return ["train-rm", str(pairs), "--base", str(env.tmp / "no-model"), "--out", str(env.tmp / "rm")]


def _rm_fix_base(env: Env) -> list[str]:
    argv = _rm_bad_base(env)
    shutil.copytree(env.model, env.tmp / "no-model")
    return argv


CASES = [
    # ---- the recipe file
    Case("duplicate-key", lambda e: e.write(yaml.safe_dump(e.base()) + "train:\n  epochs: 2\ntrain:\n  epochs: 3\n"),
         ("key 'train' appears twice", "merge them"), _good),
    Case("non-utf8-recipe", lambda e: _then(e.recipe.write_bytes(b"# caf\xe9\n" + yaml.safe_dump(e.base()).encode()),
                                            ["prepare", str(e.recipe), "--run-dir", str(e.run)]),
         ("not UTF-8", "line 1", "0xe9"), _good),
    Case("invalid-yaml", lambda e: e.write(yaml.safe_dump(e.base()) + "train: [1, 2\n"),
         ("not valid YAML at line",), _good),
    Case("recipe-missing", lambda e: ["prepare", str(e.tmp / "nope.yaml"), "--run-dir", str(e.run)],
         ("recipe file not found",), _good),
    Case("iterations-true", lambda e: e.write(e.base(iterations=True)),
         ("iterations: must be a number, not a boolean",), _good),
    Case("zero-stage-true", lambda e: e.write(e.base(**{"train.zero_stage": True})),
         ("train.zero_stage: must be a number, not a boolean",), _good),
    Case("learning-rate-inf", lambda e: e.write(yaml.safe_dump(e.base()) + "train: {learning_rate: .inf}\n"),
         ("train.learning_rate", "finite number", "inf"), _good),
    Case("beta-nan", lambda e: e.write(yaml.safe_dump(e.base()) + "train: {loss: {beta: .nan}}\n"),
         ("train.loss.beta", "finite number"), _good),
    Case("loss-param-nan", lambda e: e.write(yaml.safe_dump(e.base()) +
                                             "train: {loss: {params: {label_smoothing: .nan}}}\n"),
         ("train.loss.params", "must be finite"), _good),
    Case("max-model-len-4", lambda e: e.write(e.base(**{"generation.max_model_len": 4})),
         ("generation.max_model_len: 4 leaves no room", "max_tokens (6)"), _good),
    Case("typo-field", lambda e: e.write(e.base(**{"train.lerning_rate": 1e-4})),
         ("train.lerning_rate: unknown field", "did you mean train.learning_rate"), _good),
    Case("unknown-loss", lambda e: e.write(e.base(**{"train.loss": {"type": "dpoo"}})),
         ("train.loss.type: unknown loss 'dpoo'", "allowed:"), _good),
    Case("bad-set", lambda e: e.write(e.base()) + ["--set", "train.beta"],
         ("expected key.path=value",), _good),
    Case("path-and-preset", lambda e: e.write(e.base(**{"policy.preset": "nano"})),
         ("policy", "set exactly one of `path`"), _good),
    Case("judge-missing", lambda e: e.write(e.base(judge=_DELETE)),
         ("judge: required unless the task is offline `pairs`",), _good),
    # ---- model directories
    Case("policy-missing", lambda e: e.write(e.base(**{"policy.path": str(e.tmp / "nope")})),
         ("policy.path:", "does not exist"), _good),
    Case("policy-no-config", lambda e: _model_edit(e, lambda m: (m / "config.json").unlink()),
         ("policy.path:", "no config.json"), _restore_model),
    Case("config-not-json", lambda e: _model_edit(e, lambda m: (m / "config.json").write_text("{oops")),
         ("policy.path:", "config.json: cannot be read as JSON"), _restore_model),
    Case("truncated-safetensors", lambda e: _model_edit(e, _truncate),
         ("policy.path:", "model.safetensors: truncated"), _restore_model),
    Case("vocab-smaller-than-tokenizer", lambda e: _model_edit(e, _config_edit(vocab_size=10)),
         ("policy.path:", "tokenizer has 104 tokens but config.json vocab_size is 10", "must be >= 104"),
         _restore_model),
    Case("shapes-differ-from-config", lambda e: _model_edit(e, _config_edit(intermediate_size=999)),
         ("policy.path:", "weights do not match config.json", "mlp.gate_proj.weight is [384, 128]"),
         _restore_model),
    # ---- data files
    Case("dataset-missing", lambda e: e.write(e.base(task={"type": "dataset", "path": str(e.tmp / "no.jsonl")},
                                                     judge={"type": "python", "target": "m:f"})),
         ("task.path:", "no.jsonl does not exist"), lambda e: _dataset(e, GOOD_ROWS)),
    Case("latin1-byte", _latin1, ("task.path:", "data.jsonl: line 3: byte 0xe9 is not UTF-8"),
         lambda e: _dataset(e, GOOD_ROWS)),
    Case("jsonl-bad-line", lambda e: _then(_dataset(e, GOOD_ROWS), (e.tmp / "data.jsonl").write_text(
        json.dumps(GOOD_ROWS[0]) + "\n{oops\n"), ret=0),
         ("data.jsonl: row 1 (line 2) is not valid JSON",), lambda e: _dataset(e, GOOD_ROWS)),
    Case("prompt-column-missing", lambda e: _dataset(e, [{"question": "hi", "answer": "x"}] * 3),
         ("data.jsonl: row 0: column 'prompt' is missing", "row has ['answer', 'question']"),
         lambda e: _dataset(e, GOOD_ROWS)),
    Case("prompt-100k-chars", lambda e: _dataset(e, GOOD_ROWS[:5] + [{"prompt": "x" * 100_000, "answer": "1"}]
                                                 + GOOD_ROWS[5:]),
         ("1 prompt(s) too long", "data.jsonl row 5", "generation.max_model_len (64)", "long_prompts"),
         lambda e: e.write(yaml.safe_load(e.recipe.read_text()) | {"generation": {**e.base()["generation"],
                                                                                 "long_prompts": "drop"}})),
    Case("pairs-chosen-equals-rejected",
         lambda e: e.write(e.base(judge=_DELETE, task={"type": "pairs", "path": str(e.jsonl("p.jsonl", [
             {"prompt": f"q{i}", "chosen": "a", "rejected": "a" if i % 2 else "b"} for i in range(6)]))})),
         ("task.path: 3 of 6 pairs have chosen == rejected (rows 1, 3, 5)",),
         lambda e: e.write(e.base(judge=_DELETE, task={"type": "pairs", "path": str(e.jsonl("p.jsonl", [
             {"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(6)]))}))),
    # ---- plug-ins
    Case("plugin-constructor-raises",
         lambda e: _python_task(e, "plug_raise", "def make():\n    raise RuntimeError('no API key set')\n"),
         ("task.target: building 'plug_raise:make'", "RuntimeError: no API key set"), _fixed_plugin("plug_raise")),
    Case("plugin-module-missing", lambda e: e.write(e.base(task={"type": "python", "target": "no_such_mod:make"})),
         ("task.target:", "module 'no_such_mod' not found"), _fixed_plugin("plug_missing")),
    Case("plugin-not-a-task", lambda e: _python_task(e, "plug_obj", "def make():\n    return object()\n"),
         ("task.target:", "not a Task: missing 'has_verifier'"), _fixed_plugin("plug_obj")),
    Case("train-examples-strings",
         lambda e: _python_task(e, "plug_str", "class T(ArithmeticTask):\n    def train_examples(self, n=None, seed=0):"
                                "\n        return ['1+1=', '2+2=']\n\ndef make():\n    return T(level=1)\n"),
         ("task: train_examples() item 0 is a str", "expected selfplay.tasks.Example"), _fixed_plugin("plug_str")),
    Case("verifier-returns-3",
         lambda e: _python_task(e, "plug_three", "class T(ArithmeticTask):\n    def score(self, example, response):"
                                "\n        return 3.0\n\ndef make():\n    return T(level=1)\n"),
         ("task.target: plug_three:make score() returned 3.0", "a verifier score is a float in [0, 1]"),
         _fixed_plugin("plug_three")),
    Case("verifier-returns-string",
         lambda e: _python_task(e, "plug_yes", "class T(ArithmeticTask):\n    def score(self, example, response):"
                                "\n        return 'yes'\n\ndef make():\n    return T(level=1)\n"),
         ("task.target: plug_yes:make score() returned 'yes'", "float in [0, 1]"), _fixed_plugin("plug_yes")),
    # ---- run directories
    Case("run-dir-is-a-file", lambda e: _then(e.run.write_text("not a dir"), e.write(e.base())),
         ("run directory", "is a file, not a directory"), lambda e: _then(e.run.unlink(), e.write(e.base()))),
    Case("run-dir-read-only", _make_read_only, ("run directory", "is not writable"), _unlock),
    Case("manifest-corrupt",
         lambda e: _then(e.run.mkdir(), (e.run / "manifest.json").write_text("{"), e.write(e.base())),
         ("manifest.json is not valid JSON",), lambda e: _then((e.run / "manifest.json").unlink(), e.write(e.base()))),
    Case("resume-changed-seed", lambda e: _then(e.prepared(), e.write(e.base(seed=7))),
         ("sections differ: seed", "seed shape everything already produced"), _good),
    Case("pinned-policy-changed", _changed_input, ("policy.path:", "config.json changed since the run started"),
         _restore_model),
    Case("status-not-a-run", lambda e: ["status", str(e.tmp)], ("has no manifest.json",),
         lambda e: _then(e.prepared(), _status(e))),
    Case("status-corrupt-eval", _damage_eval, ("initial/eval.json is damaged",), _fix_eval),
    Case("report-corrupt-metrics-line", lambda e: _metrics_run(e, [STEP, "{oops", STEP, ""]),
         ("iter_000/train_metrics.jsonl: line 2 is not valid JSON",), _fix_metrics),
    # ---- train-rm
    Case("train-rm-missing-pairs", _rm_pairs, ("PAIRS:", "missing.parquet does not exist"),
         _rm_fix_base),
    Case("train-rm-bad-base", _rm_bad_base, ("--base:", "no-model is not a Hugging Face model directory"),
         _rm_fix_base),
]


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_has_one_clear_message(case: Case, tiny_model_dir, tmp_path, monkeypatch, capsys):
    shutil.copytree(tiny_model_dir, tmp_path / "nano-original")
    env = Env(tmp_path / "work", tmp_path / "work" / "model")
    env.tmp.mkdir()
    shutil.copytree(tiny_model_dir, env.model)
    monkeypatch.chdir(env.tmp)  # plug-ins are imported from the working directory
    argv = case.make(env)
    capsys.readouterr()
    before = _snapshot(env.tmp)
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    assert rc not in (0, None), f"{case.id}: exited 0; stderr:\n{err}"
    assert "Traceback" not in err
    for text in case.expect:
        assert text in err, f"{case.id}: {text!r} not in the message:\n{err}"
    assert err.count("error:") == 1, err
    after = _snapshot(env.tmp)
    lost = {k for k in before if after.get(k) != before[k]}
    assert not lost, f"{case.id}: the failing command changed or removed {sorted(lost)}"

    fixed = case.fix(env)
    capsys.readouterr()
    rc = main(fixed)
    out = capsys.readouterr()
    assert rc == 0, f"{case.id}: after the fix, {fixed} exited {rc}:\n{out.err}"


def test_table_is_big_enough():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
