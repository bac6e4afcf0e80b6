"""Lowering and export: a model package (code + safetensors + plan + report), ONNX with an onnxruntime
parity check, and graphviz pictures of graphs and plans.

>>> import tempfile, torch, hetsurgery as hs
>>> from hetsurgery import export
>>> g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))
>>> folder = export.save(g, tempfile.mkdtemp() + "/pkg")
>>> export.load(folder)(torch.randn(1, 4)).shape
torch.Size([1, 2])
"""

from hetsurgery.export.atomic import atomic_file, atomic_folder
from hetsurgery.export.checkpoint import load_weights, read_weights
from hetsurgery.export.errors import InputError
from hetsurgery.export.onnx import ParityReport, to_onnx
from hetsurgery.export.package import (
    Package,
    load,
    read_assembly,
    read_depth,
    read_package,
    read_plan,
    save,
)
from hetsurgery.export.package_files import is_package
from hetsurgery.export.pictures import BUILDERS, Picture, render, to_dot
from hetsurgery.export.pretrained import state_dict_like, to_pretrained
from hetsurgery.ir.lowering import to_module

__all__ = [
    "BUILDERS",
    "InputError",
    "Package",
    "ParityReport",
    "Picture",
    "atomic_file",
    "atomic_folder",
    "is_package",
    "load",
    "load_weights",
    "read_assembly",
    "read_depth",
    "read_package",
    "read_plan",
    "read_weights",
    "render",
    "save",
    "state_dict_like",
    "to_dot",
    "to_module",
    "to_onnx",
    "to_pretrained",
]
