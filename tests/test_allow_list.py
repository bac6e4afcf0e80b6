"""The allow-list of graph.json: what resolves (by identity, from the allowed namespaces only), what does
not, and that every namespace and node kind has its handler."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hetsurgery.export import allow_list
from hetsurgery.export.allow_list import Namespace, function_name, method_allowed, resolve_function
from hetsurgery.export.graph_data import _TARGETS, NodeOp


def test_every_namespace_and_node_kind_has_a_handler() -> None:
    assert set(allow_list._ROOTS) == set(Namespace)
    assert set(_TARGETS) == set(NodeOp)


@pytest.mark.parametrize("fn", [torch.relu, torch.cat, torch.einsum, torch.split, F.relu, F.linear, F.conv2d,
                                F.scaled_dot_product_attention, F.logsigmoid, F.pad, operator.add, operator.getitem,
                                getattr, torch._assert])
def test_torch_ops_functional_operators_and_getattr_resolve_to_themselves(fn: object) -> None:
    text = function_name(fn)
    assert text is not None and resolve_function(text) is fn


@pytest.mark.parametrize("text", [
    "os.system", "builtins.eval", "builtins.exec", "builtins.open", "builtins.__import__", "subprocess.Popen",
    "torch.load", "torch.save", "torch.from_file", "torch.compile", "torch.set_default_device", "torch.manual_seed",
    "torch.Tensor", "torch.typename", "torch.hub.load", "torch.nn.functional.torch", "torch.nn.functional.np",
    "torch.nn.functional.handle_torch_function", "operator.methodcaller", "operator.attrgetter", "operator.call",
    "torch._C._nn.linear", "torch.nn.Linear", "torch._assert_async", "torch", "", "relu", "torch..relu",
])
def test_anything_else_does_not_resolve(text: str) -> None:
    assert resolve_function(text) is None


def test_functions_outside_the_list_have_no_name() -> None:
    assert function_name(torch.load) is None and function_name(len) is None and function_name(torch.Tensor.add) is None


@pytest.mark.parametrize(("name", "allowed"), [("view", True), ("transpose", True), ("softmax", True),
                                               ("size", True), ("storage", False), ("untyped_storage", False),
                                               ("numpy", False), ("register_hook", False), ("__reduce_ex__", False),
                                               ("__call__", False), ("shape", False), ("no_such_method", False)])
def test_tensor_methods(name: str, allowed: bool) -> None:
    assert method_allowed(name) is allowed


def test_layers_come_from_the_rebuild_table_only() -> None:
    assert allow_list.layer_class("Conv2d") is nn.Conv2d
    assert allow_list.layer_class("Sequential") is None and allow_list.layer_class("system") is None


@pytest.mark.parametrize(("text", "ok"), [("layers.0.weight", True), ("_tensor_constant0", True), ("a", True),
                                          ("__class__", False), ("a.__dict__", False), ("a b", False), ("a..b", False),
                                          ('a")', False), ("", False)])
def test_dotted_names(text: str, ok: bool) -> None:
    assert allow_list.is_dotted_name(text) is ok
