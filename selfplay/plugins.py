"""Load user code named ``"module:attr"`` (a task, a judge, ...) without changing this project.

``load_object("mytasks:CountdownTask")`` imports ``mytasks`` and returns its ``CountdownTask``. The
current working directory is put on ``sys.path`` (at the end, so it never shadows installed packages),
because a user's plug-in usually sits next to their config. ``attr`` may be dotted (``"mod:Outer.inner"``).

Errors are ``PluginError`` (an ``ImportError``) and say which part failed: a malformed spec, the module
not found, the module found but failing to import (with its own error chained), or the attribute missing.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


class PluginError(ImportError):
    """A ``module:attr`` spec could not be loaded; the message names the spec and the failing part."""


def load_object(spec: str) -> Any:
    """Import ``module`` from ``"module:attr"`` (cwd on ``sys.path``) and return its ``attr``."""
    module_name, attr_path = _split_spec(spec)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    importlib.invalidate_caches()  # a file written since the last import must be found
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_prefix(exc.name, module_name):
            raise PluginError(
                f"cannot load {spec!r}: module {module_name!r} not found (searched the current "
                f"directory {cwd} and sys.path)"
            ) from exc
        raise PluginError(f"cannot load {spec!r}: importing module {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise PluginError(
            f"cannot load {spec!r}: importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for i, part in enumerate(attr_path.split(".")):
        if not hasattr(obj, part):
            where = module_name if i == 0 else f"{module_name}:{'.'.join(attr_path.split('.')[:i])}"
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:20]
            raise PluginError(
                f"cannot load {spec!r}: {where!r} has no attribute {part!r} (module file "
                f"{getattr(module, '__file__', '?')}; public names: {', '.join(public) or 'none'})"
            )
        obj = getattr(obj, part)
    return obj


def _split_spec(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise PluginError(f"plug-in spec {spec!r} must look like 'module:attr' (e.g. 'mytasks:MyTask')")
    module_name, attr_path = (s.strip() for s in spec.split(":"))
    if not module_name or not attr_path or not all(p.isidentifier() for p in attr_path.split(".")):
        raise PluginError(f"plug-in spec {spec!r} must look like 'module:attr' (e.g. 'mytasks:MyTask')")
    return module_name, attr_path


def _is_prefix(missing: str, module_name: str) -> bool:
    """True if the missing module is ``module_name`` itself or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")
