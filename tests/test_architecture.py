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


MANIFEST_OWNER = "selfplay.loop.manifest"
# the weight sync's bucket directories have a manifest.json of their own, another file
OTHER_MANIFESTS = ("selfplay.sync",)


def test_only_the_manifest_model_names_the_manifest_file():
    """The run's manifest is read and written through :class:`selfplay.loop.manifest.Manifest` only: no other
    module of ``selfplay/`` or ``bench/`` names ``manifest.json`` (a path built from that name is the
    first step of writing the file around the model)."""
    paths = {**MODULES, **{f"bench.{p.stem}": p for p in sorted((ROOT / "bench").glob("*.py"))}}
    offenders = []
    for name, path in paths.items():
        if name == MANIFEST_OWNER or name.startswith(OTHER_MANIFESTS):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip("/").endswith(
                    "manifest.json") and " " not in node.value:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
    assert MANIFEST_OWNER in MODULES  # the check sees the module it exempts


FAMILY_REGISTRY = "selfplay.train.family"
# config validation may still refuse combinations (e.g. `segment_turns` with loss kto)
MAY_CHECK_LOSS_TYPES = ("selfplay.config",)


def _is_loss(node: ast.AST) -> bool:
    """``loss``, ``loss_cfg`` or any ``<...>.loss`` (``cfg.loss``, ``rt.cfg.train.loss``)."""
    return (isinstance(node, ast.Name) and node.id in ("loss", "loss_cfg")) or (
        isinstance(node, ast.Attribute) and node.attr == "loss")


def _is_text(node: ast.AST) -> bool:
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in items)


def _family_branches(source: str, where: str) -> list[str]:
    """Comparisons of a loss config's ``type`` with loss names, and reads of its ``reference_free``."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Attribute) and o.attr == "type" and _is_loss(o.value) for o in operands) and any(
                    _is_text(o) for o in operands):
                found.append(f"{where}:{node.lineno} compares the loss type with a name")
        elif isinstance(node, ast.Attribute) and node.attr == "reference_free" and _is_loss(node.value):
            found.append(f"{where}:{node.lineno} reads loss.reference_free")
    return found


def test_only_the_family_registry_picks_an_objective_family():
    """Which objective family a loss belongs to (sft / kto / tdpo / pair losses / reference-free) is decided
    in ``selfplay/train/family.py`` alone: no other module of ``selfplay/``, ``actors/`` or ``bench/``
    compares ``loss.type`` (``cfg.train.loss.type``, ``loss_cfg.type``) with loss names or reads
    ``loss.reference_free``; they ask ``family_for(loss)``. Config validation is exempt."""
    paths = {**MODULES, **{f"bench.{p.stem}": p for p in sorted((ROOT / "bench").rglob("*.py"))}}
    offenders = [hit for name, path in paths.items()
                 if name != FAMILY_REGISTRY and not name.startswith(MAY_CHECK_LOSS_TYPES)
                 for hit in _family_branches(path.read_text(), str(path.relative_to(ROOT)))]
    assert offenders == []
    # the check finds what it forbids, and sees the module it exempts
    planted = 'if cfg.train.loss.type == "kto" or loss_cfg.type in ("sft", "tdpo") or cfg.loss.reference_free: pass'
    assert len(_family_branches(planted, "planted")) == 3 and FAMILY_REGISTRY in MODULES
