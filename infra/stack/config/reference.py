"""The stack-config reference (docs/deploy/configuration.md), rendered from the config models themselves.

Every key's type, default and meaning come from its field: the annotation, the default (a nested section's default
comes from the parent's default instance, so `nodePools.system.minSize` shows the system pool's own 2) and the
field's `description`. scripts/docs writes the page; a test fails when it is stale or a field has no description.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.alias_generators import to_camel, to_snake
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from stack.config.base import ConfigSection
from stack.config.loader import OBJECT_KEYS, SCALAR_KEYS, SECRET_KEYS, StackConfig

# StackConfig fields that are not keys of the project namespace: where each is written instead.
_OTHER_KEYS = {"region": "aws:region"}
# Defaults the loader fills in from the stack itself (load_stack_config), not from the model.
_LOADER_DEFAULTS = {"environment": "the stack's name"}


class Key(NamedTuple):
    """One documented key: its path in the stack file (camelCase, `[]` for a list's items) and its field."""

    path: str
    type: str
    default: str
    description: str


def documented_keys() -> Iterator[Key]:
    """Every key a stack file may hold, top-level first, then each object's keys depth first."""
    fields = StackConfig.model_fields
    for field in (*SCALAR_KEYS.values(), *_OTHER_KEYS):
        scalar = _key(_OTHER_KEYS.get(field, to_camel(field)), fields[field], _field_default(fields[field]))
        yield scalar._replace(default=_LOADER_DEFAULTS.get(field, scalar.default))
    for secret in SECRET_KEYS:
        yield Key(secret, "secret string", "unset", _description(secret, fields[to_snake(secret)]))
    for name, field in OBJECT_KEYS.items():
        yield from _object_keys(name, fields[field], _field_default(fields[field]))


def describe() -> str:
    """Markdown: one table of top-level keys, then one table per config object."""
    keys = list(documented_keys())
    objects = {key: StackConfig.model_fields[field] for key, field in OBJECT_KEYS.items()}
    out = ["### Top-level keys", "", *_table(key for key in keys if "." not in key.path and key.path not in objects)]
    for name, info in objects.items():
        out += ["", f"### `{name}`", "", _description(name, info), ""]
        out += _table(key for key in keys if key.path.startswith(f"{name}."))
    return "\n".join(out)


def _table(keys: Iterator[Key]) -> list[str]:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{key.path}` | {key.type} | {key.default} | {_cell(key.description)} |" for key in keys]
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# ------------------------------------------------------------------------------------------------ the field walk


_NO_DEFAULT = object()


def _field_default(info: FieldInfo) -> Any:
    return _NO_DEFAULT if info.default is PydanticUndefined else info.default


def _object_keys(path: str, info: FieldInfo, default: Any) -> Iterator[Key]:
    """The object's own row, then its fields' rows (a list of objects: its items' fields under `path[]`)."""
    yield _key(path, info, default)
    section = _section(info.annotation)
    if section is not None:
        item_path = f"{path}[]" if _is_list(info.annotation) else path
        # A list's items, or a section that is unset by default, show their own fields' defaults.
        parent = default if isinstance(default, BaseModel) else None
        for name, child in section.model_fields.items():
            child_default = getattr(parent, name) if parent is not None else _field_default(child)
            yield from _object_keys(f"{item_path}.{to_camel(name)}", child, child_default)


def _key(path: str, info: FieldInfo, default: Any) -> Key:
    return Key(path, _type_text(info.annotation, info.metadata), _default_text(default), _description(path, info))


def _description(path: str, info: FieldInfo) -> str:
    if not info.description:
        raise ValueError(f"stack config key {path} has no Field(description=...): document it where it is defined")
    return info.description


def _section(annotation: Any) -> type[ConfigSection] | None:
    """The config section a field holds (itself, optionally, or as list items), if any."""
    for candidate in (annotation, *_flatten(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, ConfigSection):
            return candidate
    return None


def _flatten(annotation: Any) -> Iterator[Any]:
    for arg in get_args(annotation):
        yield arg
        yield from _flatten(arg)


def _is_list(annotation: Any) -> bool:
    return get_origin(_without_none(annotation)) in (list, tuple)


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        others = [arg for arg in get_args(annotation) if arg is not type(None)]
        return others[0] if len(others) == 1 else annotation
    return annotation


# ------------------------------------------------------------------------------------------------- type, default


def _type_text(annotation: Any, metadata: list[Any]) -> str:
    annotation = _without_none(annotation)
    if get_origin(annotation) is Annotated:
        inner, *extra = get_args(annotation)
        nested = [item for info in extra if isinstance(info, FieldInfo) for item in info.metadata]
        return _type_text(inner, [*metadata, *nested])
    origin = get_origin(annotation)
    if origin is Literal:
        return " · ".join(f"`{_json(value)}`" for value in get_args(annotation))
    if origin in (list, tuple):
        item = get_args(annotation)[0]
        return "list of objects" if _section(item) else f"list of {_type_text(item, [])}"
    if origin is dict:
        return "map of string to string"
    if isinstance(annotation, type) and issubclass(annotation, ConfigSection):
        return "object"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", IPv4Network: "CIDR"}
    return names[annotation] + _range(metadata)


def _range(metadata: list[Any]) -> str:
    low = next((f"≥ {m.ge}" for m in metadata if isinstance(m, annotated_types.Ge)), None)
    low = low or next((f"> {m.gt}" for m in metadata if isinstance(m, annotated_types.Gt)), None)
    high = next((f"≤ {m.le}" for m in metadata if isinstance(m, annotated_types.Le)), None)
    bounds = [bound for bound in (low, high) if bound]
    return f" ({', '.join(bounds)})" if bounds else ""


def _default_text(default: Any) -> str:
    if default is _NO_DEFAULT:
        return "required"
    if default is None:
        return "unset"
    if isinstance(default, BaseModel):
        return "—"
    if isinstance(default, list | tuple):
        return f"`[{', '.join(_json(item) for item in default)}]`"
    if isinstance(default, dict):
        return f"`{{{', '.join(f'{key}: {_json(value)}' for key, value in default.items())}}}`"
    return f"`{_json(default)}`"


def _json(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
