"""The command line against bad input: every mistake exits 2 (1 only when a valid operation fails) with one
line on stderr and no traceback, and no file outside the intended output changes — not the inputs, not a
folder that happens to sit next to the output."""

from __future__ import annotations

import importlib
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import pytest
import safetensors.torch
import torch
import yaml

import hetsurgery as hs
from hetsurgery.cli import main
from hetsurgery.export import save

ROOT = pathlib.Path(__file__).resolve().parents[1]
USER_CODE = '''
import pathlib, time
import torch
from hetsurgery.zoo import mlp
from hetsurgery.zoo.data import digits

def raising(**kwargs):
    raise RuntimeError("no GPU here")

def not_a_module(**kwargs):
    return {"hidden": [16]}

def small(**kwargs):
    return mlp([8], **kwargs)

def bare_tensors():
    return [torch.randn(32, 1, 8, 8) for _ in range(2)]

def dict_batches():
    x, y = digits("test").tensors
    return [{"image": x[i:i + 64], "label": y[i:i + 64]} for i in range(0, 256, 64)]

def float_labels():
    return [(torch.randn(32, 1, 8, 8), torch.rand(32)) for _ in range(2)]

def not_iterable():
    return 42

def slow(marker):
    pathlib.Path(marker).write_text("loading")
    time.sleep(120)
    return []
'''

BASE = {
    "models": [{"factory": "mlp", "kwargs": {"hidden": [16, 16]}, "weights": "a.safetensors", "name": "A"},
               {"factory": "mlp", "kwargs": {"hidden": [24, 16]}, "weights": "b.pt", "name": "B"}],
    "input_shape": [1, 8, 8],
    "calibration": {"dataset": "digits", "every": 8},
    "width": {"method": "zip"},
}


class World:
    """A run folder (config, weights, user code), a folder next to the output, and byte snapshots of both."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root, self.run, self.out = root, root / "run", root / "out"
        self.neighbour = root / "neighbour"
        self.run.mkdir()
        self.neighbour.mkdir()
        (self.neighbour / "notes.txt").write_text("keep me")
        torch.manual_seed(0)
        safetensors.torch.save_file(hs.zoo.mlp([16, 16]).state_dict(), str(self.run / "a.safetensors"))
        torch.save(hs.zoo.mlp([24, 16]).state_dict(), self.run / "b.pt")
        self.code = f"user_{uuid.uuid4().hex[:10]}"  # a fresh module name: tests share one interpreter
        (self.run / f"{self.code}.py").write_text(USER_CODE)

    def config(self, edit: dict | None = None, raw: str | None = None) -> pathlib.Path:
        path = self.run / "merge.yaml"
        config = yaml.safe_load(yaml.safe_dump(BASE))
        config.update(edit or {})
        path.write_text(raw if raw is not None else yaml.safe_dump(config, sort_keys=False))
        return path

    def snapshot(self) -> dict[str, bytes | None]:
        """Every file's bytes and every folder (None) under the root; Python's own __pycache__ left out."""
        return {str(p.relative_to(self.root)): (p.read_bytes() if p.is_file() else None)
                for p in sorted(self.root.rglob("*")) if "__pycache__" not in p.parts}


@pytest.fixture
def world(tmp_path: pathlib.Path) -> World:
    return World(tmp_path)


def refused(argv: list[str], world: World, capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    """Run the CLI and check: exit ``code``, one line on stderr, no traceback, nothing on disk changed."""
    before = world.snapshot()
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, err
    assert err.count("\n") == 1 and err.startswith(f"hetsurgery {argv[0]}: ") and "Traceback" not in err, err
    assert world.snapshot() == before
    return err


def merge_refused(world: World, capsys: pytest.CaptureFixture[str], edit: dict | None = None,
                  raw: str | None = None, out: pathlib.Path | None = None) -> str:
    config = world.config(edit, raw)
    return refused(["merge", str(config), "-o", str(out or world.out), "--quiet"], world, capsys)


def _poison(world: World, value: float) -> None:
    state = safetensors.torch.load_file(str(world.run / "a.safetensors"))
    state["layers.0.weight"][0, 0] = value
    safetensors.torch.save_file(state, str(world.run / "a.safetensors"))


# -- item 8: a merge that refuses its input exits 2 ------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights(value: float, world: World, capsys: pytest.CaptureFixture[str]) -> None:
    _poison(world, value)
    assert "layers.0.weight holds NaN or Inf" in merge_refused(world, capsys)


EQUAL = [BASE["models"][0], {**BASE["models"][1], "kwargs": {"hidden": [16, 16]}, "weights": "a.safetensors"}]


@pytest.mark.parametrize(("edit", "message"), [
    ({"width": {"method": "zip", "target": {7: 16}}}, "width names groups [7]"),
    ({"width": {"method": "zip", "target": {0: 500}}}, "width 500 is outside 1..40"),
    ({"width": {"method": "permute", "target": "max"}, "models": EQUAL}, "width= works with zip, ot and mal"),
    ({"width": {"method": "weight", "target": 1}, "models": EQUAL}, "width= works with zip, ot and mal"),
    ({"width": {"method": "permute"}}, "has width 16 in A and 24 in B; it needs equal"),
    ({"width": {"method": "average"}}, "has width 16 in A and 24 in B; it needs equal"),
])
def test_widths_the_methods_refuse(edit: dict, message: str, world: World,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert message in merge_refused(world, capsys, edit)


# -- item 9: user errors are one line, before any work -------------------------------------------------

def test_evaluation_data_without_labels_is_refused_before_merging(world: World, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    def no_merge(*args: object, **kwargs: object) -> None:
        raise AssertionError("the merge ran before the evaluation data was checked")

    monkeypatch.setattr(importlib.import_module("hetsurgery.merging"), "merge", no_merge)
    err = merge_refused(world, capsys, {"evaluate": {"loader": f"{world.code}:bare_tensors"}})
    assert "evaluate: batch 0 holds inputs but no labels" in err
    err = merge_refused(world, capsys, {"evaluate": {"loader": f"{world.code}:float_labels"}})
    assert "evaluate: the labels of batch 0 must be whole class numbers" in err


def test_dict_batches_need_input_key(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    err = merge_refused(world, capsys, {"calibration": {"loader": f"{world.code}:dict_batches"}})
    assert "batch 0 is a dict with keys image, label; name the inputs with input_key:" in err
    err = merge_refused(world, capsys, {"calibration": {"loader": f"{world.code}:dict_batches", "input_key": "x"}})
    assert "batch 0 has no key 'x'; its keys are image, label" in err
    err = merge_refused(world, capsys, {"calibration": {"dataset": "digits", "input_key": "image"}})
    assert "calibration: input_key and label_key name the parts of a loader's dict batches; give a loader" in err


def test_dict_batches_with_keys_merge_and_score(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    data = {"loader": f"{world.code}:dict_batches", "input_key": "image", "label_key": "label"}
    config = world.config({"calibration": data, "evaluate": {**data, "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]}})
    assert main(["merge", str(config), "-o", str(world.out), "--quiet"]) == 0
    assert "| merged |" in capsys.readouterr().out and (world.out / "model.safetensors").is_file()


@pytest.mark.parametrize(("factory", "message"), [
    ("raising", "raising(**{}) failed: RuntimeError: no GPU here"),
    ("not_a_module", "not_a_module(**{}) returned a dict, not an nn.Module"),
])
def test_a_factory_that_fails_is_named(factory: str, message: str, world: World, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    models = [{"factory": f"{world.code}:{factory}"}, BASE["models"][1]]
    assert f"models.0 ({world.code}:{factory}): {world.code}:{message}" in merge_refused(
        world, capsys, {"models": models})
    monkeypatch.chdir(world.run)  # inspect and render import factories from the current folder
    for command in ("inspect", "render"):
        assert f"{world.code}:{message}" in refused([command, f"{world.code}:{factory}"], world, capsys)


def test_loaders_that_fail_are_named(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    err = merge_refused(world, capsys, {"calibration": {"loader": f"{world.code}:not_iterable"}})
    assert f"calibration.loader '{world.code}:not_iterable' returned a int, not an iterable of batches" in err
    err = merge_refused(world, capsys, {"calibration": {"loader": f"{world.code}:nothere"}})
    assert f"calibration.loader: cannot load '{world.code}:nothere'" in err


def test_a_factory_module_that_does_not_import(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (world.run / f"{world.code}_broken.py").write_text("def make(:\n")
    models = [{"factory": f"{world.code}_broken:make"}, BASE["models"][1]]
    assert "SyntaxError" in merge_refused(world, capsys, {"models": models})


def test_duplicate_keys_are_refused_with_their_lines(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_dump(BASE, sort_keys=False) + "calibration: {dataset: digits, every: 2}\n"
    first, second = (n for n, line in enumerate(raw.splitlines(), 1) if line.startswith("calibration:"))
    err = merge_refused(world, capsys, raw=raw)
    assert f"merge.yaml is not valid YAML: line {second}: key 'calibration' is given twice (first on line {first})" in err
    raw = yaml.safe_dump(BASE, sort_keys=False).replace("every: 8", "every: 8\n  every: 4")
    assert "key 'every' is given twice" in merge_refused(world, capsys, raw=raw)


@pytest.mark.parametrize(("edit", "message"), [
    ({"width": {"target": "biggest"}}, "width.target: must be max, min, a model index or {group: width}, not biggest"),
    ({"width": {"target": {0: -1}}}, "width.target: must be max, min, a model index or {group: width}, not {0: -1}"),
    ({"calibration": {"batch_size": 0}}, "calibration.batch_size: must be greater than 0, not 0"),
    ({"calibration": {"dataset": "mnist"}}, "calibration.dataset: must be digits, not mnist"),
    ({"seed": 1.5}, "seed: must be a whole number, not 1.5"),
    ({"input_shape": [1, "a"]}, "input_shape.1: must be a whole number, not a"),
    ({"models": [{"factory": "mlp"}]}, "models: needs at least 2 items, not 1"),
    ({"depth": {"balance": "add"}}, "depth.method: missing; it is required"),
])
def test_schema_problems_in_plain_words(edit: dict, message: str, world: World,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    err = merge_refused(world, capsys, edit)
    assert f"merge.yaml: {message}" in err
    for internal in ("Input should", "literal[", "constrained-", "Field required", "Value error"):
        assert internal not in err


def test_several_schema_problems_are_listed_one_per_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    config = world.config({"seed": "x", "anchor": -1})
    before = world.snapshot()
    assert main(["merge", str(config), "-o", str(world.out), "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines() == ["hetsurgery merge: merge.yaml has 2 problems:",
                                                    "  anchor: must be at least 0, not -1",
                                                    "  seed: must be a whole number, not x"]
    assert world.snapshot() == before


@pytest.mark.parametrize(("raw", "message"), [
    ("models: [a\n", "merge.yaml is not valid YAML: line 2, column 1"),
    ("- 1\n- 2\n", "merge.yaml must hold a mapping (models:, input_shape:, ...), not list"),
    ("", "merge.yaml must hold a mapping (models:, input_shape:, ...), not nothing"),
])
def test_config_files_that_are_not_configs(raw: str, message: str, world: World,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert message in merge_refused(world, capsys, raw=raw)


def test_inspect_with_a_wrong_input_shape(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["inspect", "resnet20", "--input-shape", "3,32,32"], world, capsys)
    assert err.startswith("hetsurgery inspect: resnet20: ")


@pytest.mark.parametrize("argv", [["inspect", "mlp", "--kw", "hidden=[16"], ["inspect", "mlp", "--input-shape", "0,8"],
                                  ["inspect", "nosuch"], ["render", "mlp", "-o", "x.pdf"]])
def test_bad_arguments(argv: list[str], world: World, capsys: pytest.CaptureFixture[str]) -> None:
    refused(argv, world, capsys)


# -- item 5: outputs never touch inputs ------------------------------------------------------------------

def test_outputs_over_the_inputs_are_refused(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    weights = world.run / "w"
    weights.mkdir()
    (world.run / "a.safetensors").rename(weights / "a.safetensors")
    models = [{**BASE["models"][0], "weights": "w/a.safetensors"}, BASE["models"][1]]
    pkg = world.run / f"{world.code}_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from hetsurgery.zoo import mlp\n")
    models[1] = {**models[1], "factory": f"{world.code}_pkg:mlp"}
    cases = {world.run: "contains", weights: "contains", weights / "a.safetensors": "is", pkg / "out": "lies inside",
             world.root: "contains"}
    for out, relation in cases.items():
        err = merge_refused(world, capsys, {"models": models}, out=out)
        assert f"the output {out} {relation}" in err and "which this run reads" in err


def test_merge_into_a_project_folder_is_refused(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder with model.py and model.safetensors among other files is a project, not a package."""
    proj = world.root / "proj"
    (proj / "data").mkdir(parents=True)
    for name in ("model.py", "model.safetensors", "train.py"):
        (proj / name).write_text(f"# the user's {name}")
    merge_refused(world, capsys, out=proj)
    assert (proj / "train.py").read_text() == "# the user's train.py" and (proj / "data").is_dir()


@pytest.fixture
def package(world: World) -> pathlib.Path:
    return save(hs.trace(hs.zoo.mlp([16]), torch.randn(2, 1, 8, 8)), world.root / "pkg")


def test_export_and_render_write_only_new_files_into_a_package(package: pathlib.Path, world: World,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    outside = "choose a path outside the package"
    (world.root / "folder.onnx").mkdir()
    for argv, message in ((["export", str(package), "-o", str(package / "model.py")], "does not end in .onnx"),
                          (["export", str(package), "-o", str(package / "plan.onnx")], outside),
                          (["export", str(package), "-o", str(package / "other.onnx")], outside),
                          (["export", str(package), "-o", str(world.root / "folder.onnx")],
                           "is a folder; give a file name"),
                          (["render", str(package), "-o", str(package / "model.svg")], outside),
                          (["render", str(package), "-o", str(package / "sub" / "g.svg")], outside)):
        assert message in refused(argv, world, capsys)


def test_trust_code_reaches_the_package_reader(package: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    targets = importlib.import_module("hetsurgery.config.targets")
    real, seen = targets.read_package, []

    def reader(folder: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return real(folder)

    monkeypatch.setattr(targets, "read_package", reader)
    assert main(["inspect", str(package), "--trust-code"]) == 0
    assert main(["inspect", str(package)]) == 0
    assert seen == [{"trust_code": True}, {}]


def test_inspect_imports_factories_from_the_current_folder(world: World, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(world.run)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(world.run))])
    assert main(["inspect", f"{world.code}:small", "--kw", "num_classes=3"]) == 0
    assert "2 groups, 1 permutable" in capsys.readouterr().out
    assert main(["render", f"{world.code}:small", "-o", str(world.out / "g.gv")]) == 0


# -- Ctrl-C -----------------------------------------------------------------------------------------------

def test_ctrl_c_exits_130_with_one_line_and_writes_nothing(world: World) -> None:
    marker = world.root / "loading"
    config = world.config({"calibration": {"loader": f"{world.code}:slow", "kwargs": {"marker": str(marker)}}})
    before = world.snapshot()
    proc = subprocess.Popen([sys.executable, "-m", "hetsurgery", "merge", str(config), "-o", str(world.out),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT, err  # stopped by Ctrl-C, as Unix tools are: the shell shows 130
    assert err == "hetsurgery merge: interrupted; nothing was written\n"
    marker.unlink()
    assert world.snapshot() == before
