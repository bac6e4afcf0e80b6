"""Pydantic's validation errors in plain words: the key path, what it must be, and what was given.

Pydantic names union branches (``literal['max','min']``, ``constrained-int``) and says ``Input should be
a valid integer``; a user wrote YAML, not Python types. A key whose value matched no branch of a union
gets one sentence from the field's ``accepts`` text.

>>> from pydantic import ValidationError
>>> from hetsurgery.config.schema import MergeConfig
>>> raw = {"models": [{"factory": "mlp"}, {"factory": "mlp"}], "input_shape": [64], "width": {"target": "big"}}
>>> try:
...     MergeConfig.model_validate(raw)
... except ValidationError as exc:
...     print(describe(exc, raw))
['width.target: must be max, min, a model index or {group: width}, not big']
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from hetsurgery.config.schema import MergeConfig

# pydantic's error type -> what the value must be, in the user's words ({...} from the error's context)
MUST_BE = {
    "int_parsing": "a whole number", "int_type": "a whole number", "int_from_float": "a whole number",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
    "bool_type": "true or false", "string_type": "text", "path_type": "a file name", "list_type": "a list",
    "tuple_type": "a list", "dict_type": "a mapping (key: value)", "model_type": "a section of keys (key: value)",
    "greater_than": "greater than {gt}", "greater_than_equal": "at least {ge}", "less_than": "less than {lt}",
    "less_than_equal": "at most {le}",
}


def describe(exc: ValidationError, raw: object, schema: type[BaseModel] = MergeConfig) -> list[str]:
    """One line per problem (several errors of one union key become one line), in the order pydantic found them;
    ``schema`` is the config's root model (``MergeConfig`` for ``hetsurgery merge``)."""
    lines: list[str] = []
    unions: set[tuple[object, ...]] = set()
    for err in exc.errors():
        path, field, branch = _key_path(err["loc"], schema)
        if branch:  # a value that fits no branch of a union: one line for the key
            if path not in unions:
                unions.add(path)
                lines.append(f"{_dotted(path)}: must be {_accepts(field, err)}, not {_shown(_lookup(raw, path))}")
            continue
        lines.append(_line(err, path, schema))
    return lines


def _line(err: Any, path: tuple[object, ...], schema: type[BaseModel]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        section = _section(path[:-1], schema)
        known = f"; the keys here are {', '.join(section.model_fields)}" if section is not None else ""
        return f"{_dotted(path)}: unknown key (a typo?){known}"
    if kind == "missing":
        field = _field(path, schema)
        what = f" ({field.description})" if field is not None and field.description else ""
        return f"{_dotted(path)}: missing; it is required{what}"
    if kind == "too_short":
        text = f"needs at least {ctx.get('min_length')} items, not {ctx.get('actual_length')}"
    elif kind == "literal_error":
        text = f"must be {str(ctx.get('expected', '')).replace(chr(39), '')}, not {_shown(err['input'])}"
    elif kind in MUST_BE:
        text = f"must be {MUST_BE[kind].format(**ctx)}, not {_shown(err['input'])}"
    else:  # our own validators' messages, and any type pydantic adds later
        text = str(err["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    return f"{_dotted(path)}: {text}" if path else text


def _key_path(loc: Sequence[object], schema: type[BaseModel]) -> tuple[tuple[object, ...], FieldInfo | None, bool]:
    """The keys of ``loc`` as the user wrote them, the field they end in, and whether a union branch was named."""
    cls: type[BaseModel] | None = schema
    path: list[object] = []
    field: FieldInfo | None = None
    for part in loc:
        if cls is not None and isinstance(part, str) and part in cls.model_fields:
            field = cls.model_fields[part]
            cls = model_in(field.annotation)
            path.append(part)
        elif isinstance(part, int):
            path.append(part)
        elif field is not None and _is_union(field.annotation):
            return tuple(path), field, True
        else:
            path.append(part)
    return tuple(path), field, False


def _accepts(field: FieldInfo | None, err: Any) -> str:
    extra = field.json_schema_extra if field is not None else None
    if isinstance(extra, dict) and isinstance(extra.get("accepts"), str):
        return str(extra["accepts"])
    return MUST_BE.get(err["type"], "something else").format(**(err.get("ctx") or {}))


def _field(path: tuple[object, ...], schema: type[BaseModel]) -> FieldInfo | None:
    cls: type[BaseModel] | None = schema
    field = None
    for part in path:
        if isinstance(part, str) and cls is not None and part in cls.model_fields:
            field = cls.model_fields[part]
            cls = model_in(field.annotation)
    return field


def _section(path: Sequence[object], schema: type[BaseModel]) -> type[BaseModel] | None:
    cls: type[BaseModel] | None = schema
    for part in path:
        if isinstance(part, int) or cls is None:
            continue
        field = cls.model_fields.get(str(part))
        cls = model_in(field.annotation) if field is not None else None
    return cls


def model_in(annotation: object) -> type[BaseModel] | None:
    """The pydantic model in an annotation (``DataSpec | None``, ``list[ModelSpec]``), if there is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in typing.get_args(annotation) if (m := model_in(arg)) is not None), None)


def _is_union(annotation: object) -> bool:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return typing.get_origin(annotation) in (typing.Union, type(int | str)) and len(args) > 1


def _lookup(raw: object, path: tuple[object, ...]) -> object:
    for part in path:
        if isinstance(raw, dict):
            raw = raw.get(part)
        elif isinstance(raw, list) and isinstance(part, int) and part < len(raw):
            raw = raw[part]
        else:
            return None
    return raw


def _shown(value: object) -> str:
    """A value as YAML would show it: ``big``, ``[1, 2]``, ``{0: -1}``, ``true``."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null (an empty value)"
    return str(value) if isinstance(value, str) else repr(value)


def _dotted(path: Sequence[object]) -> str:
    return ".".join(str(p) for p in path)
