"""Stages say what they need: a stage body reads only the narrow :class:`StageContext` from ``rt`` (the recipe,
the run directory, the task, the log and progress display, the sampling settings); every part it uses
(generator pool, learner group, judge, weight sync) is a parameter the driver passes. Checked on the
source with ``ast``, so a stage that reaches into the runtime for a part fails here, naming the line."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ROOT / "selfplay" / "loop" / "stages"
# modules whose functions take the stage context as ``rt`` besides the stage package
HELPERS = [ROOT / "selfplay" / "loop" / "evaluation.py", ROOT / "selfplay" / "loop" / "prompt_source.py"]


def _context_members() -> set[str]:
    tree = ast.parse((STAGES / "context.py").read_text())
    protocol = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StageContext")
    members = {n.target.id for n in protocol.body if isinstance(n, ast.AnnAssign)}
    members |= {n.name for n in protocol.body if isinstance(n, ast.FunctionDef)}
    return members


def test_stages_read_only_the_stage_context_from_rt():
    allowed = _context_members()
    assert allowed == {"cfg", "rd", "task", "log", "progress", "sampling"}
    found, reached = set(), []
    for path in [*sorted(STAGES.glob("*.py")), *HELPERS]:
        for fn in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(fn, ast.FunctionDef) or "rt" not in {a.arg for a in fn.args.args}:
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "rt":
                    found.add(node.attr)
                    if node.attr not in allowed:
                        reached.append(f"{path.relative_to(ROOT)}:{node.lineno} rt.{node.attr}")
    assert reached == []
    assert {"cfg", "rd", "task", "progress"} <= found  # the check saw the stage bodies
