"""YAML as the user wrote it: ``yaml.safe_load``, except that a key given twice is an error, not overwritten.

``yaml.safe_load`` keeps the last of two equal keys without a word, so a second ``weights:`` would
silently win. ``read_yaml`` refuses it and names the key and both lines.

>>> read_yaml_text("a: 1\\nb: {c: 2}\\n")
{'a': 1, 'b': {'c': 2}}
>>> read_yaml_text("a: 1\\nb: 2\\na: 3\\n")
Traceback (most recent call last):
...
hetsurgery.config.yaml_loader.DuplicateKeyError: line 3: key 'a' is given twice (first on line 1); keep one
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping holds the same key twice."""

    def __init__(self, key: object, first_line: int, line: int) -> None:
        super().__init__(f"line {line}: key {key!r} is given twice (first on line {first_line}); keep one")
        self.key, self.first_line, self.line = key, first_line, line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises ``DuplicateKeyError`` for a repeated key (merge keys ``<<`` excepted)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader names it below
                continue
        return super().construct_mapping(node, deep=deep)


def read_yaml_text(text: str) -> Any:
    """The document in ``text`` (safe types only); ``yaml.YAMLError`` when it is not valid YAML."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: no Python objects


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A one-line description of a YAML error: ``line 3, column 5: mapping values are not allowed here``."""
    if isinstance(exc, DuplicateKeyError):
        return str(exc)
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())
