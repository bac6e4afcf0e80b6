"""Read a ``hetsurgery merge`` config file: YAML without duplicate keys, then the strict schema.

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "merge.yaml"
>>> _ = path.write_text("models: [{factory: mlp}, {factory: mlp}]\\ninput_shape: [64]\\nseed: 1.5\\n")
>>> load_config(path)
Traceback (most recent call last):
...
hetsurgery.config.load.ConfigProblems: merge.yaml: seed: must be a whole number, not 1.5
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hetsurgery.config.problems import describe
from hetsurgery.config.schema import MergeConfig
from hetsurgery.config.yaml_loader import read_yaml_text, yaml_problem
from hetsurgery.export.errors import InputError

C = TypeVar("C", bound=BaseModel)


class ConfigProblems(InputError):
    """A config file that breaks the schema; ``problems`` lists each one by its key path.

    The message is one line for one problem and a list for several (the only multi-line message the
    command line prints).
    """

    def __init__(self, path: Path, problems: list[str]) -> None:
        if len(problems) == 1:
            text = f"{path.name}: {problems[0]}"
        else:
            text = f"{path.name} has {len(problems)} problems:\n  " + "\n  ".join(problems)
        super().__init__(text)
        self.path, self.problems = path, tuple(problems)


def load_config(path: str | os.PathLike[str]) -> MergeConfig:
    """Parse and validate a YAML config; ``InputError`` names the line of bad YAML or each bad key."""
    return read_config(path, MergeConfig, "merge")


def read_config(path: str | os.PathLike[str], schema: type[C], command: str) -> C:
    """``load_config`` for the config of ``hetsurgery COMMAND`` whose root model is ``schema``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        raw = read_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"{path.name} is not valid YAML: {yaml_problem(exc)}") from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"cannot read {path}: {exc}; give a UTF-8 YAML file") from exc
    if not isinstance(raw, dict):
        keys = "".join(f"{k}:, " for k in list(schema.model_fields)[:2])
        raise InputError(f"{path.name} must hold a mapping ({keys}...), not "
                         f"{'nothing' if raw is None else type(raw).__name__}; see hetsurgery {command} --example-config")
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigProblems(path, describe(exc, raw, schema)) from exc
