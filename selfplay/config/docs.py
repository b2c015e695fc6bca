"""Render the recipe schema as text (``selfplay schema``): every field path, its type, default and doc."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from selfplay.config.schema import RunConfig


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_models_in(arg))
    return out


def _type_name(annotation) -> str:
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("selfplay.config.schema.", "")


def _walk(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _models_in(field.annotation)
        if nested:
            tags = [m.model_fields["type"].annotation for m in nested if "type" in m.model_fields]
            if tags and len(nested) > 1:
                choices = ", ".join(typing.get_args(t)[0] for t in tags)
                lines.append(f"{path}.type: one of {choices}")
            doc = field.description or (nested[0].__doc__ or "").strip().splitlines()[0:1]
            if isinstance(doc, list):
                doc = doc[0] if doc else ""
            lines.append(f"{path}: section. {doc}".rstrip())
            for sub in nested:
                tag = sub.model_fields.get("type")
                union = tag is not None and len(nested) > 1
                sub_prefix = f"{path}[type={typing.get_args(tag.annotation)[0]}]." if union else f"{path}."
                _walk(sub, sub_prefix, lines)
            continue
        default = "required" if field.default is PydanticUndefined else f"default {field.default!r}"
        lines.append(f"{path}: {_type_name(field.annotation)} ({default}). {field.description or ''}".rstrip())


def schema_text() -> str:
    lines: list[str] = []
    _walk(RunConfig, "", lines)
    return "\n".join(lines)
