"""Load a recipe: YAML file + ``--set key=value`` overrides -> validated :class:`RunConfig`.

Errors are collected (not first-only) and each line names the field path, the bad value and what is
allowed, e.g. ``train.beta: must be greater than 0 (got -1)``. Override values are parsed as YAML, so
``--set train.beta=0.2``, ``--set generation.stop=['\\n']`` and ``--set policy.path=null`` all work;
an override of an unknown key is the same "unknown field" error as a typo in the file.

The YAML loader refuses a key given twice in one mapping (plain YAML keeps the last one, so a second
``train:`` section would silently replace the first), and a recipe that is not UTF-8 is an error naming
the line of the first bad byte, not a decoding traceback.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from selfplay.config.schema import RunConfig

_UNION_SECTIONS = {"task", "judge"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (the default keeps the last)."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (lines {seen[key]} and {line}); "
                "YAML would keep only the last one: merge them into one", key_node.start_mark)
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _read_utf8(path: Path, name: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(name, [f"<recipe>: not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} "
                                 "(save the recipe as UTF-8)"]) from None


class ConfigError(ValueError):
    """A recipe that cannot run. ``problems`` holds one ``"field.path: message"`` line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid recipe {source}:\n{lines}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.loss.beta=0.2"`` -> (["train", "loss", "beta"], 0.2)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", [f"{item!r}: expected key.path=value, e.g. train.beta=0.2"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError("--set", [f"{key}: cannot parse value {raw!r} ({exc.problem})"]) from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError("--set", [f"{'.'.join(path)}: {where} is {child!r}, not a section"])
            node = child
        node[path[-1]] = value
    return data


def _format_loc(loc: tuple, data: dict[str, Any]) -> str:
    parts = [str(p) for p in loc]
    # Discriminated unions put the tag in the location ("judge.reward_model.path"): drop it.
    if len(parts) > 1 and parts[0] in _UNION_SECTIONS:
        tag = (data.get(parts[0]) or {}).get("type") if isinstance(data.get(parts[0]), dict) else None
        if parts[1] == tag:
            parts.pop(1)
    return ".".join(parts)


def _field_paths(model=None, prefix: str = "") -> list[str]:
    from selfplay.config.docs import _models_in

    out = []
    for name, field in (model or RunConfig).model_fields.items():
        out.append(prefix + name)
        for sub in _models_in(field.annotation):
            out.extend(_field_paths(sub, f"{prefix}{name}."))
    return sorted(set(out))


def _suggest(path: str) -> str:
    paths = _field_paths()
    leaf = path.rsplit(".", 1)[-1]
    same_leaf = [p for p in paths if p.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(path, paths, n=2, cutoff=0.75)
    if close:
        return f"; did you mean {' or '.join(close[:2])}?"
    return " (`selfplay schema` lists the fields)"


def format_errors(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        path = _format_loc(err["loc"], data)
        msg = err["msg"]
        kind = err["type"]
        if kind == "value_error":
            msg = msg.removeprefix("Value error, ")
            # Section validators write "field: message"; join it onto the section path.
            head, sep, rest = msg.partition(": ")
            if sep and head.replace("_", "").replace(".", "").isalnum() and " " not in head:
                path = f"{path}.{head}" if path else head
                msg = rest
        elif kind == "extra_forbidden":
            msg = "unknown field" + _suggest(path)
        elif kind == "union_tag_invalid":
            msg = msg.replace("Input tag", "type").replace("found using 'type' does not match", "is not")
        elif kind == "missing":
            msg = "required field is missing"
        shows_input = kind not in ("missing", "extra_forbidden", "union_tag_invalid") and "input" in err
        if shows_input and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        problems.append(f"{path or '<recipe>'}: {msg}")
    return problems


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Load and validate a recipe (a YAML path or an already-parsed dict), applying ``--set`` overrides."""
    if isinstance(source, dict):
        name, data = "<dict>", dict(source)
    else:
        name = str(source)
        path = Path(source)
        if not path.is_file():
            raise ConfigError(name, [f"recipe file not found: {path}"])
        try:
            data = safe_load_unique(_read_utf8(path, name)) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(name, [f"<recipe>: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
        if not isinstance(data, dict):
            raise ConfigError(name, [f"<recipe>: expected a mapping of sections, got {type(data).__name__}"])
    data = apply_overrides(data, list(overrides or []))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(name, format_errors(exc, data)) from None


def dump_config(cfg: RunConfig) -> str:
    """The fully resolved recipe as YAML (written into every run's manifest)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
