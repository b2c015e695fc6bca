"""The seams the tree relies on, checked on the source with ``ast`` (no imports, so it runs in a second):

* **Where code runs is decided in one place.** Only ``selfplay/loop`` (the factory and the runtime) and
  the CLI import ``actors/``; every library package below builds in-process parts only.
* **No import cycle** among the modules of ``selfplay/`` and ``actors/``, counting imports made inside
  functions too (a cycle through a lazy import is still two modules that cannot be read apart).
* **Small functions.** No function or method in ``selfplay/`` or ``actors/`` is longer than 60 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
MAY_IMPORT_ACTORS = ("selfplay.loop", "selfplay.cli", "actors")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted([*(ROOT / "selfplay").rglob("*.py"), *(ROOT / "actors").rglob("*.py")]):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of this tree that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m in MODULES and m != name}


def test_only_the_loop_and_the_cli_import_actors():
    offenders = [f"{name} imports {sorted(m for m in _imports(name, path) if m.split('.')[0] == 'actors')}"
                 for name, path in MODULES.items()
                 if not name.startswith(MAY_IMPORT_ACTORS)
                 and any(m.split(".")[0] == "actors" for m in _imports(name, path))]
    assert offenders == []


def test_no_import_cycle():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    for name in graph:  # a package's own __init__ importing its submodules is not a cycle
        graph[name] = {m for m in graph[name] if not (name.startswith(m + ".") and graph[m] >= {name})}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_the_checks_see_the_tree():
    """Guards against a check that passes because it found nothing."""
    assert {"selfplay.loop.factory", "actors.generator", "selfplay.records", "selfplay.remote"} <= set(MODULES)
    assert "actors.generator" in _imports("selfplay.loop.factory", MODULES["selfplay.loop.factory"])
    assert "selfplay.remote" in _imports("actors.learner", MODULES["actors.learner"])
