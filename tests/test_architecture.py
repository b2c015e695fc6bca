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


# ------------------------------------------------------------------ who loads weights into a generator
def _classes(path: Path) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in ast.parse(path.read_text(), str(path)).body if isinstance(n, ast.ClassDef)}


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a chain of names and attributes, else ``""``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _generator_load_methods() -> set[str]:
    """The generator actor's methods that put weights into its engine: those that call the engine's
    ``load_*``, call such a method of their own, or call one of their own methods by name (``restore``)."""
    methods = _methods(_classes(MODULES["actors.generator"])["GeneratorActor"])
    loads: set[str] = set()
    while True:
        found = set(loads)
        for name, fn in methods.items():
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                if _dotted(f).startswith("self.engine.load"):
                    found.add(name)  # self.engine.load_*(...)
                elif isinstance(f, ast.Attribute) and _dotted(f.value) == "self" and f.attr in loads:
                    found.add(name)  # self.<a load method>(...)
                elif isinstance(f, ast.Call) and _dotted(f.func) == "getattr" and _dotted(f.args[0]) == "self":
                    found.add(name)  # getattr(self, <a method named by the caller>)(...)
        if found == loads:
            return loads
        loads = found


def _scanned() -> dict[str, Path]:
    bench = {f"bench.{p.stem}": p for p in sorted((ROOT / "bench").glob("*.py"))}
    return {**MODULES, **bench}


def test_only_the_sync_and_the_pool_load_weights_into_a_generator():
    """A load method of the generator actor is reached as ``.<method>.remote(...)`` or by its name (``call_all``,
    ``getattr``); outside ``selfplay/sync`` and the generator module's actor and pool classes, neither occurs.
    ``selfplay/sync`` names them (a staged part says which method loads it) but calls none: the pool does."""
    loads = _generator_load_methods()
    assert {"load_buckets", "load_dir", "load_path", "load_adapter", "restore", "broadcast_receive"} <= loads
    pool_classes = {"GeneratorActor", "GeneratorPool", "PolicySource"}  # the actor, the pool and its record
    offenders = []
    for name, path in _scanned().items():
        sync = name.startswith("selfplay.sync")
        tree = ast.parse(path.read_text(), str(path))
        skip: set[int] = set()
        if name == "actors.generator":
            for cls in tree.body:
                if isinstance(cls, ast.ClassDef) and cls.name in pool_classes:
                    skip |= {id(n) for n in ast.walk(cls)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            remote = (isinstance(node, ast.Attribute) and node.attr == "remote"
                      and isinstance(node.value, ast.Attribute) and node.value.attr in loads)
            named = not sync and isinstance(node, ast.Constant) and node.value in loads
            if remote or named:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


# ------------------------------------------------------------ kinds of worker differ by type, not by attribute
def _worker_attributes() -> set[str]:
    """The public names of the learner and generator interfaces and their implementations, plus Ray's mark of
    an actor handle (``remote``) and the names the older kind checks used."""
    names = {"remote", "actors", "export_ref", "is_remote", "_local"}
    for module, classes in (("selfplay.sync.base", ("LearnerHandle", "GeneratorSide")),
                            ("actors.learner", ("LocalLearner", "LearnerGroup", "_Handle", "LearnerActor")),
                            ("actors.generator", ("GeneratorActor", "GeneratorPool"))):
        found = _classes(MODULES[module])
        for cls in classes:
            names |= {n for n in _methods(found[cls]) if not n.startswith("__")}
            names |= {n.target.id for n in found[cls].body
                      if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return names


def test_learner_and_generator_kinds_are_not_told_apart_by_attribute_checks():
    """No ``hasattr(x, NAME)``, ``getattr(x, NAME, default)`` or ``is_remote(...)`` where NAME is part of the
    learner or generator interfaces: a caller has one path (``LearnerHandle``; the pool for generators)."""
    names = _worker_attributes()
    assert {"export", "probe_logps", "load", "holds", "load_buckets", "remote"} <= names
    offenders = []
    for _, path in _scanned().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            fn, args = node.func.id, node.args
            checks = (fn == "hasattr" and len(args) == 2) or (fn == "getattr" and len(args) == 3)
            attr = args[1].value if checks and isinstance(args[1], ast.Constant) else None
            if fn == "is_remote" or attr in names:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {fn}(..., {attr!r})")
    assert offenders == []
