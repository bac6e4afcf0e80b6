"""The user's files and arguments turned into library calls: the YAML schemas of ``hetsurgery merge`` and
``hetsurgery assemble``, their builders, the model a command is pointed at, the rules that keep outputs off inputs, and the reports.

It sits between ``merge`` and ``cli``: ``cli`` parses arguments and calls one function of this package.

>>> cfg = MergeConfig.model_validate({"models": [{"factory": "mlp"}, {"factory": "mlp"}], "input_shape": [64]})
>>> cfg.width.method
'zip'
"""

from hetsurgery.config.assembly_run import AssemblyRun, run_assembly
from hetsurgery.config.assembly_schema import AssemblyConfig, DonorSpec
from hetsurgery.config.batches import build_data
from hetsurgery.config.build import build_model, build_models, check_input_shape, device_of, importable_from
from hetsurgery.config.example import example_config
from hetsurgery.config.load import ConfigProblems, load_config
from hetsurgery.config.paths import Input, check_file_output, check_output, merge_inputs
from hetsurgery.config.run import MergeRun, run_merge
from hetsurgery.config.schema import DataSpec, DepthSpec, EvaluationSpec, MergeConfig, ModelSpec, WidthSpec
from hetsurgery.config.targets import model_graph, open_package, package_inputs

__all__ = [
    "AssemblyConfig",
    "AssemblyRun",
    "ConfigProblems",
    "DataSpec",
    "DepthSpec",
    "DonorSpec",
    "EvaluationSpec",
    "Input",
    "MergeConfig",
    "MergeRun",
    "ModelSpec",
    "WidthSpec",
    "build_data",
    "build_model",
    "build_models",
    "check_file_output",
    "check_input_shape",
    "check_output",
    "device_of",
    "example_config",
    "importable_from",
    "load_config",
    "merge_inputs",
    "model_graph",
    "open_package",
    "package_inputs",
    "run_assembly",
    "run_merge",
]
