"""Outputs never touch inputs: a run refuses an output path that is, contains or lies inside what it reads.

The inputs of a run are the files and folders it reads: the config file, the weights files, the modules
(or whole Python packages) of the factories and loaders, and a model package. Writing over one of them,
or replacing a folder that holds one, would lose it. The one exception is documented: ``export`` and
``render`` write a *new* file into the package they read (``PACKAGE/model.onnx``, ``PACKAGE/graph.svg``),
never over one of the package's own files.

>>> from pathlib import Path
>>> check_output(Path("/data/run/out"), [Input(Path("/data/run/out/a.pt"), "the weights of models.0")])
Traceback (most recent call last):
...
hetsurgery.export.errors.InputError: the output /data/run/out contains /data/run/out/a.pt, the weights of models.0, which this run reads; choose an output path outside the run's inputs
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hetsurgery.config.build import importable_from, relative
from hetsurgery.config.schema import MergeConfig
from hetsurgery.export.errors import InputError
from hetsurgery.export.outputs import check_file
from hetsurgery.export.package_files import SAVED_FILES

OWN_FILES = frozenset(SAVED_FILES)  # a package's own files: never written over by a command


@dataclass(frozen=True)
class Input:
    """A file or folder a run reads, and what it is (for the message)."""

    path: Path
    role: str


def check_output(output: Path, inputs: Iterable[Input]) -> None:
    """``InputError`` when ``output`` is, contains or lies inside one of ``inputs``."""
    out = output.resolve()
    for item in inputs:
        src = item.path.resolve()
        relation = ("is" if out == src else "contains" if src.is_relative_to(out)
                    else "lies inside" if out.is_relative_to(src) else None)
        if relation is not None:
            raise InputError(f"the output {output} {relation} {item.path}, {item.role}, which this run reads; "
                             "choose an output path outside the run's inputs")


def check_file_output(output: Path, inputs: Iterable[Input], package: Path | None, default: Path | None, *,
                      force: bool = False) -> None:
    """The rules for a file that ``export`` or ``render`` writes, checked before any work.

    ``output`` must not touch ``inputs``; inside ``package`` (the package being read) only ``default`` (the
    documented new file) may be written, never one of the package's own files; and everywhere the rule of
    ``hetsurgery.export.outputs.check_file`` holds (no existing file outside a package unless ``force``).
    """
    check_file(output, force=force)
    if package is not None and output.resolve().is_relative_to(package.resolve()):
        if default is None or output.resolve() != default.resolve() or output.name in OWN_FILES:
            hint = f"leave out -o to write {default}, or " if default is not None else ""
            raise InputError(f"the output {output} lies inside the package {package} that this run reads; "
                             f"{hint}choose a path outside the package")
    else:
        check_output(output, [*inputs, *([Input(package, "the package")] if package is not None else [])])


def merge_inputs(cfg: MergeConfig, config_path: Path) -> list[Input]:
    """What ``hetsurgery merge`` reads: the config, every weights file, every factory's and loader's module."""
    base = config_path.parent
    inputs = [Input(config_path, "the config file")]
    for k, spec in enumerate(cfg.models):
        if spec.weights is not None:
            inputs.append(Input(relative(spec.weights, base), f"the weights of models.{k}"))
        inputs += code_inputs(spec.factory, base, f"the factory of models.{k}")
    for section, data in (("calibration", cfg.calibration), ("evaluate", cfg.evaluate)):
        if data is not None and data.loader is not None:
            inputs += code_inputs(data.loader, base, f"the {section} loader")
    return inputs


def code_inputs(spec: str, base: Path, role: str) -> list[Input]:
    """The file of a top-level module, or the folder of a top-level package, that ``package.module:name`` imports.

    Found without running any code (``find_spec`` of the top-level name); nothing when it is not found,
    which the build step then reports.
    """
    module, colon, _ = spec.partition(":")
    if not colon or not module:
        return []
    top = module.split(".")[0]
    try:
        with importable_from(base):
            found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if found is None:
        return []
    if found.submodule_search_locations:
        return [Input(Path(p), f"{role} (package {top})") for p in found.submodule_search_locations]
    if found.origin is None or found.origin in ("built-in", "frozen"):
        return []
    return [Input(Path(found.origin), f"{role} (module {top})")]
