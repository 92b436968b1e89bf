"""Typed config schemas: one dataclass per configurable class, checked at start-up.

A class's options and their defaults live in one dataclass beside the class.
``validate(schema, data, path)`` merges a user mapping over the dataclass
defaults and checks it. All problems are collected and raised together as one
``ConfigError`` whose lines name each key's full path (``model.freeze_vit``),
and for an unknown key the closest valid one.

Supported field types: ``bool``, ``int``, ``float`` (an int is accepted),
``str``, ``Any``, ``Optional[X]``, ``X | None``, ``list[X]``, ``dict[str, X]``,
``Literal[...]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from lavislite.common.registry import close_matches
from lavislite.common.errors import UserError

MISSING = dataclasses.MISSING


class ConfigError(UserError, ValueError):
    """A config failed validation; the message lists every problem with its key path."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        head = f"Invalid config{f' ({source})' if source else ''}:"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


def required() -> Any:
    """Marks a dataclass field as required (no default), keeping field order free."""
    return dataclasses.field(default=MISSING, metadata={"required": True})


def validate(schema: type, data: Any, path: str, source: str = "") -> dict[str, Any]:
    """Merges ``data`` over ``schema``'s defaults and checks keys and types.

    Args:
        schema: a dataclass type describing the section.
        data: the user mapping (plain dict / DictConfig converted to a container).
        path: the dotted path of this section, used in messages (``"model"``).
        source: where the data came from (a file name), used in the message head.

    Returns:
        A plain dict with every schema field filled (defaults for the ones not given).

    Raises:
        ConfigError: listing every unknown key (with the closest valid key), missing
            required key and wrong type, each with its full path.
    """
    problems: list[str] = []
    out = _check_dataclass(schema, data, path, problems)
    if not problems:
        problems = section_problems(schema, out, path)
    if problems:
        raise ConfigError(problems, source)
    return out


def section_problems(schema: type, data: dict[str, Any], path: str) -> list[str]:
    """Runs the cross-key rules of ``schema`` and its bases on validated ``data``.

    A schema states rules that no single field's type can (two switches that
    contradict each other) as a static method ``check_section(data) -> list[str]``
    whose messages start with the key they are about, relative to the section.
    """
    problems: list[str] = []
    seen: set[Any] = set()
    for cls in schema.__mro__:
        hook = cls.__dict__.get("check_section")
        if hook is None or hook in seen:
            continue
        seen.add(hook)
        func = hook.__func__ if isinstance(hook, staticmethod) else hook
        problems += [_join(path, p) for p in func(data)]
    return problems


def defaults(schema: type) -> dict[str, Any]:
    """Returns the schema's defaults as a plain dict (required fields omitted)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def field_paths(schema: type, prefix: str = "") -> list[str]:
    """Every key path a schema knows, nested dataclasses included (``qformer``, ``qformer.num_query_token``).

    Used to tell a user who wrote a key in the wrong place where it belongs.
    Mappings of free keys (``dict[str, X]``) are not walked: their keys are the user's.
    """
    paths: list[str] = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        path = _join(prefix, f.name)
        paths.append(path)
        tp = hints[f.name]
        if typing.get_origin(tp) in (Union, types.UnionType):
            nested = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            tp = nested[0] if len(nested) == 1 else tp
        if dataclasses.is_dataclass(tp):
            paths += field_paths(tp, path)  # type: ignore[arg-type]
    return paths


def instantiate(schema: type, data: dict[str, Any]) -> Any:
    """Builds a ``schema`` instance from a validated dict, nested dataclasses included."""
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for f in dataclasses.fields(schema):
        value = data.get(f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = instantiate(tp, value)  # type: ignore[arg-type]
        kwargs[f.name] = value
    return schema(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_dataclass(schema: type, data: Any, path: str, problems: list[str]) -> dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path or '<root>'}: expected a mapping, got {type(data).__name__} ({data!r})")
        return {}
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    out: dict[str, Any] = {}
    for key in data:
        if key not in fields:
            hint = close_matches(str(key), list(fields), n=1)
            msg = f"{_join(path, str(key))}: unknown key"
            if hint:
                msg += f"; did you mean '{_join(path, hint[0])}'?"
            else:
                msg += f"; valid keys here: {', '.join(fields)}"
            problems.append(msg)
    for name, f in fields.items():
        key_path = _join(path, name)
        if name in data:
            out[name] = _check_value(hints[name], data[name], key_path, problems)
        elif f.default is not MISSING:
            out[name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
            if dataclasses.is_dataclass(value):
                out[name] = _check_dataclass(type(value), {}, key_path, problems)
            else:
                out[name] = value
        else:
            problems.append(f"{key_path}: required key is missing ({_type_name(hints[name])})")
    return out


def _check_value(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _check_value(non_none[0], value, path, problems)
        for option in non_none:
            trial: list[str] = []
            result = _check_value(option, value, path, trial)
            if not trial:
                return result
        problems.append(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} ({value!r})")
        return value
    if origin is Literal:
        if value not in args:
            problems.append(f"{path}: expected one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _check_dataclass(tp, value, path, problems)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {type(value).__name__} ({value!r})")
            return value
        item_tp = args[0] if args else Any
        return [_check_value(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__} ({value!r})")
            return value
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _check_value(val_tp, v, _join(path, str(k)), problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected a bool (true/false), got {type(value).__name__} ({value!r})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an int, got {type(value).__name__} ({value!r})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected a float, got {type(value).__name__} ({value!r})")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {type(value).__name__} ({value!r})")
        return value
    return value


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")
