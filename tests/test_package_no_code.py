"""Packages load without running code: the model is rebuilt from graph.json, whose functions, methods,
attributes, layers and names are checked against an allow-list; model.py runs only with trust_code=True."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from package_edits import rehash

import hetsurgery as hs
from hetsurgery.export import InputError, load, read_package, save


@pytest.fixture
def folder(tmp_path: pathlib.Path) -> pathlib.Path:
    return save(hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4)), tmp_path / "pkg")


def _marker(folder: pathlib.Path) -> pathlib.Path:
    return folder.parent / "ran.txt"


def test_model_py_runs_only_when_trusted(folder: pathlib.Path) -> None:
    marker = _marker(folder)
    code = folder / "model.py"
    code.write_text(code.read_text() + f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    rehash(folder)
    assert load(folder)(torch.randn(3, 4)).shape == (3, 2)
    pkg = read_package(folder)
    assert [(tuple(x.shape), x.dtype) for x in pkg.example_inputs] == [((2, 4), torch.float32)]
    assert pkg.model(*pkg.example_inputs).shape == (2, 2)
    assert not marker.exists()
    load(folder, trust_code=True)
    assert marker.read_text() == "ran"


def _edit_graph(folder: pathlib.Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((folder / "graph.json").read_text())
    edit(doc)
    (folder / "graph.json").write_text(json.dumps(doc))
    rehash(folder)  # past the digests: the content itself is refused


def _node(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    return next(n for n in doc["nodes"] if n["name"] == name)


def _call(target: str, *args: object) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        _node("flatten", doc).update(op="call_function", target=target, args=list(args), kwargs={})
    return edit


def _touch(marker: pathlib.Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


CALLS = {
    "os.system": lambda m: _call("os.system", f"touch {m}"),
    "builtins.exec": lambda m: _call("builtins.exec", _touch(m)),
    "builtins.eval": lambda m: _call("builtins.eval", _touch(m)),
    "builtins.__import__": lambda m: _call("builtins.__import__", "os"),
    "subprocess.run": lambda m: _call("subprocess.run", ["touch", str(m)]),
    "torch.load": lambda m: _call("torch.load", str(m)),
    "torch.from_file": lambda m: _call("torch.from_file", str(m), True, 4),
    "torch.hub.load": lambda m: _call("torch.hub.load", "a/b", "c"),
    "operator.methodcaller": lambda m: _call("operator.methodcaller", "system"),
    "a module path": lambda m: _call("hetsurgery.zoo.mlp"),
    "getattr of a dunder": lambda m: _call("builtins.getattr", {"node": "x"}, "__class__"),
    "getattr of a method": lambda m: _call("builtins.getattr", {"node": "x"}, "untyped_storage"),
}


@pytest.mark.parametrize("case", sorted(CALLS))
def test_a_graph_that_calls_anything_outside_the_allow_list_is_refused(case: str, folder: pathlib.Path) -> None:
    marker = _marker(folder)
    _edit_graph(folder, CALLS[case](marker))
    with pytest.raises(InputError, match=r"pkg/graph.json: node 'flatten'.* (not a torch op|tensor attributes)"):
        load(folder)
    with pytest.raises(InputError, match=r"pkg/graph.json"):
        read_package(folder)
    assert not marker.exists()


def _method(target: str, receiver: object = None) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        _node("flatten", doc).update(target=target, args=[receiver or {"node": "x"}])
    return edit


def _rename(key: str, value: Callable[[pathlib.Path], object]) -> Callable[[pathlib.Path], Callable[[dict], None]]:
    def edit_for(marker: pathlib.Path) -> Callable[[dict[str, Any]], None]:
        def edit(doc: dict[str, Any]) -> None:
            node = _node("x", doc) if key == "placeholder" else _node("layers_0", doc)
            if key == "kwargs":
                node["kwargs"] = {value(marker): 1}
            elif key == "placeholder":
                node["target"] = value(marker)
            else:
                node[key] = value(marker)
        return edit
    return edit_for


REFUSED = {
    "method __reduce_ex__": (lambda m: _method("__reduce_ex__"), "not a tensor method"),
    "method storage": (lambda m: _method("storage"), "not a tensor method"),
    "method numpy": (lambda m: _method("numpy"), "not a tensor method"),
    "method register_hook": (lambda m: _method("register_hook"), "not a tensor method"),
    "method on a literal": (lambda m: _method("split", "a b"), "on a literal"),
    "code in an input name": (_rename("placeholder", lambda m: f"x={_touch(m)}"), "input .* is not a valid name"),
    "code in a layer name": (_rename("target", lambda m: f'layers.0"); {_touch(m)}; ("'), "layer .* not a valid name"),
    "code in a keyword": (_rename("kwargs", lambda m: f"dim={_touch(m)}, x"), "keyword names Python names"),
    "code in a node name": (_rename("name", lambda m: f"a = {_touch(m)}"), "not a Python name"),
    "a node named self": (_rename("name", lambda m: "self"), "not a Python name"),
    "an input named self": (_rename("placeholder", lambda m: "self"), "input 'self' is not a valid name"),
    "an unknown value": (lambda m: _method("flatten", {"pickle": "cos\nsystem\n"}), "unknown value tag 'pickle'"),
    "a layer class outside torch.nn": (
        lambda m: lambda doc: doc["modules"]["layers.0"].update({"class": "os.system"}), "not a torch.nn layer"),
    "a layer argument it does not set": (
        lambda m: lambda doc: doc["modules"]["layers.0"]["kwargs"].update(device="meta"), "does not set"),
    "a tensor of an unknown kind": (
        lambda m: lambda doc: doc["tensors"].update({"t": {"kind": "code", "shape": [1], "dtype": "float32"}}),
        "kind 'code'"),
    "a node that is used before it is defined": (lambda m: _method("flatten", {"node": "layers_2"}),
                                                 "no earlier node defines"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_names_and_values_of_a_graph_are_checked(case: str, folder: pathlib.Path) -> None:
    marker = _marker(folder)
    edit, message = REFUSED[case]
    _edit_graph(folder, edit(marker))
    with pytest.raises(InputError, match=rf"pkg/graph.json: .*{message}"):
        load(folder)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["forward", "training", "layers.0.forward", "layers.9"])
def test_get_attr_reads_only_tensors_and_layers_of_the_model(target: str, folder: pathlib.Path) -> None:
    _edit_graph(folder, lambda doc: _node("flatten", doc).update(op="get_attr", target=target, args=[]))
    with pytest.raises(InputError, match=rf"do not fit together \(RebuildError: node 'flatten' reads '{target}'"):
        load(folder)


def test_call_module_calls_only_layers_of_the_model(folder: pathlib.Path) -> None:
    _edit_graph(folder, lambda doc: _node("layers_0", doc).update(target="layers"))
    with pytest.raises(InputError, match=r"node 'layers_0' calls 'layers', which is not a layer"):
        load(folder)
