"""``hetsurgery merge --example-config``: a commented YAML template of every key, made from the schema.

Each key is preceded by its description. A key that is required or has a default is written with its
example (or default) value; an optional key without a default, and an optional section, is written
commented out with an example, unless the schema marks it ``"template": "shown"`` (the calibration data,
which most methods need). The template loads as it is (the weights files it names must exist to
merge). Nothing here names a key by hand, so the template cannot drift from the schema.

>>> text = example_config()
>>> "batch_size: 128" in text and "# tasks: [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]" in text
True
"""

from __future__ import annotations

import json
import textwrap
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from hetsurgery.config.problems import model_in
from hetsurgery.config.schema import MergeConfig

HEADER = """\
# hetsurgery merge CONFIG.yaml -o OUT: every key, with its meaning. Relative file names are read from
# this file's folder. Lines starting with '#' followed by a key are optional: remove the '#' to use one.
# Save the weights of each model with safetensors.torch.save_file(model.state_dict(), "a.safetensors")
# or torch.save(model.state_dict(), "b.pt")."""


def example_config(schema: type[BaseModel] = MergeConfig, header: str = HEADER) -> str:
    """The template: the header, then every field of ``schema`` (``MergeConfig``), sections and lists of sections
    included."""
    return "\n".join([header, *_fields(schema, None, indent=0, off=False)]) + "\n"


def _fields(cls: type[BaseModel], given: dict[str, Any] | None, indent: int, off: bool) -> list[str]:
    lines: list[str] = []
    for name, field in cls.model_fields.items():
        comments, body = _entry(name, field, given, indent, off)
        lines += comments + body
    return lines


def _entry(name: str, field: FieldInfo, given: dict[str, Any] | None, indent: int, off: bool
           ) -> tuple[list[str], list[str]]:
    """The description of one key and its line(s): ``key: value``, or a section / list of sections below it."""
    actual = given.get(name) if given is not None else _default(field)
    value = actual if actual not in (None, {}, []) or not field.examples else field.examples[0]
    sub = model_in(field.annotation)
    absent = off or (actual is None and not field.is_required() and not _shown(field))
    if sub is None:
        return _comment(field, indent), [_line(f"{name}: {json.dumps(value, default=str)}", indent, absent)]
    if typing.get_origin(field.annotation) is not list:
        return _comment(field, indent), [_line(f"{name}:", indent, absent), *_fields(
            sub, value if isinstance(value, dict) else None, indent + 2, absent)]
    body = [_line(f"{name}:", indent, absent)]
    for item in value or [{}]:
        (first, first_field), *rest = sub.model_fields.items()
        _, head = _entry(first, first_field, item, indent + 4, absent)
        body += _comment(first_field, indent + 2)
        body.append(_line("- " + head[0].lstrip().removeprefix("# "), indent + 2, absent))
        body += head[1:]
        for key, f in rest:
            comments, lines = _entry(key, f, item, indent + 4, absent)
            body += comments + lines
    return _comment(field, indent), body


def _shown(field: FieldInfo) -> bool:
    """An optional section the template writes switched on (``json_schema_extra={"template": "shown"}``)."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("template") == "shown"


def _example(field: FieldInfo) -> Any:
    return field.examples[0] if field.examples else _default(field)


def _default(field: FieldInfo) -> Any:
    if field.is_required():
        return None
    default = field.get_default(call_default_factory=True)
    return default.model_dump(mode="json") if isinstance(default, BaseModel) else default


def _comment(field: FieldInfo, indent: int) -> list[str]:
    text = (field.description or "").strip()
    if field.is_required():
        text = f"(required) {text}"
    return textwrap.wrap(text, width=110, initial_indent=" " * indent + "# ",
                         subsequent_indent=" " * indent + "#   ") if text else []


def _line(text: str, indent: int, off: bool) -> str:
    return " " * indent + ("# " if off else "") + text
