"""Model packages: save -> load reproduces outputs (in a fresh process without the zoo), ties survive,
checkpoints are never unpickled, and a failed save leaves nothing behind."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch
from helpers import randomise
from package_edits import rehash
from torch import nn

import hetsurgery as hs
import hetsurgery.export.package as package
from hetsurgery.export import InputError, load, read_package, read_weights, save
from hetsurgery.plan.width_plan import GroupMatch, WidthPlan

X = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
MODELS = {
    "resnet": lambda: hs.zoo.resnet((1, 1, 1)),
    "transformer-mha": lambda: hs.zoo.transformer("mha", depth=1),
    "transformer-manual": lambda: hs.zoo.transformer("manual", depth=1),
    "densenet": lambda: hs.zoo.densenet((2, 2), growth=4),
    "mobilenet": lambda: hs.zoo.mobilenet(((8, 1, 1), (16, 1, 2))),
    "vgg": lambda: hs.zoo.vgg(),
    "mlp": lambda: hs.zoo.mlp([16, 8]),
}


class TiedLM(nn.Module):
    """Tied input/output embeddings, a loose parameter and a tensor constant."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight
        self.offset = nn.Parameter(torch.randn(8))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(tokens) + self.offset) * torch.ones(8))


def test_save_then_load_in_a_fresh_process_reproduces_outputs_exactly(tmp_path: pathlib.Path) -> None:
    expected = {}
    for name, make in MODELS.items():
        model = randomise(make(), seed=1)
        save(hs.trace(model, X[:2], name=name), tmp_path / name)
        with torch.no_grad():
            expected[name] = model(X)
    safetensors.torch.save_file({"x": X}, str(tmp_path / "x.safetensors"))
    script = textwrap.dedent(f"""
        import importlib.util, pathlib, sys
        import safetensors.torch, torch
        root = pathlib.Path({str(tmp_path)!r})
        # clone: tensors read by safetensors are not 64-byte aligned, and MKL's sgemm rounds by alignment
        x = safetensors.torch.load_file(str(root / "x.safetensors"))["x"].clone()
        out = {{}}
        for name in {sorted(MODELS)!r}:
            spec = importlib.util.spec_from_file_location("model_" + name.replace("-", "_"), root / name / "model.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            with torch.no_grad():
                out[name] = module.load(root / name)(x).contiguous()
        assert not any(m == "hetsurgery" or m.startswith("hetsurgery.") for m in sys.modules), "hetsurgery imported"
        safetensors.torch.save_file(out, str(root / "out.safetensors"))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    got = safetensors.torch.load_file(str(tmp_path / "out.safetensors"))
    for name in MODELS:
        assert torch.equal(got[name], expected[name]), (name, (got[name] - expected[name]).abs().max())


def test_package_files_plan_and_report(tmp_path: pathlib.Path) -> None:
    g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))
    match = GroupMatch.from_perms(0, [torch.arange(8), torch.randperm(8)], [0.5, 0.5])
    plan = WidthPlan("permute", (0.5, 0.5), 0, {0: match})
    folder = save(g, tmp_path / "pkg", plan=plan, report="joint accuracy **0.91**")
    assert sorted(p.name for p in folder.iterdir()) == ["graph.json", "model.py", "model.safetensors", "plan.json",
                                                        "report.md"]
    pkg = read_package(folder)
    assert pkg.plan is not None and pkg.plan.method == "permute"
    assert pkg.plan.groups[0].assignment(1) == match.assignment(1)
    raw = json.loads((folder / "plan.json").read_text())
    assert raw["format"] == "hetsurgery-plan/2" and raw["depth"] is None and raw["passes"] == []
    assert sorted(raw["files"]) == ["graph.json", "model.py", "model.safetensors"]
    assert all(d.startswith("sha256:") and len(d) == 7 + 64 for d in raw["files"].values())
    assert "joint accuracy **0.91**" in pkg.report and "| 0 | 8 / 8 | 8 | permutation |" in pkg.report
    assert [tuple(x.shape) for x in pkg.example_inputs] == [(2, 4)]
    source = (folder / "model.py").read_text()
    assert "'layers.0': ('Linear', {'in_features': 4, 'out_features': 8})," in source
    assert "def forward(self, x" in source and "hetsurgery" not in source.split('"""')[2]


def test_tied_weights_are_stored_once_and_tied_again(tmp_path: pathlib.Path) -> None:
    model = TiedLM().eval()
    tokens = torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(0))
    folder = save(model, tmp_path / "lm", example_inputs=tokens)
    stored = safetensors.torch.load_file(str(folder / "model.safetensors"))
    assert "emb.weight" in stored and "head.weight" not in stored
    twin = load(folder)
    assert twin.head.weight is twin.emb.weight
    with torch.no_grad():
        assert torch.equal(twin(tokens), model(tokens))


def test_saving_over_a_package_replaces_it_but_a_foreign_folder_is_refused(tmp_path: pathlib.Path) -> None:
    g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))
    save(g, tmp_path / "pkg")
    save(g, tmp_path / "pkg", report="second")
    assert "second" in (tmp_path / "pkg" / "report.md").read_text()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        save(g, tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"


def test_a_failed_save_leaves_nothing_half_written(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save(hs.trace(hs.zoo.mlp([8]), torch.randn(2, 64)), tmp_path / "pkg")
    assert list(tmp_path.iterdir()) == []


def test_layers_model_py_cannot_rebuild_are_refused_by_name(tmp_path: pathlib.Path) -> None:
    class Opaque(nn.Linear):
        pass

    g = hs.trace(nn.Sequential(Opaque(4, 4), nn.ReLU()), torch.randn(2, 4), leaf_modules=(Opaque,))
    with pytest.raises(hs.ExportError, match=r"layer '0' is a .*Opaque"):
        save(g, tmp_path / "pkg")
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_are_read_without_unpickling(tmp_path: pathlib.Path) -> None:
    model = hs.zoo.mlp([8])
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "trainer.ckpt")
    safetensors.torch.save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("state.pt", "trainer.ckpt", "w.safetensors"):
        assert torch.equal(read_weights(tmp_path / name)["layers.0.weight"], model.layers[0].weight)
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(InputError, match=r"pickled Python objects .* never unpickles code"):
        read_weights(tmp_path / "whole.pt")
    with pytest.raises(InputError, match="does not exist"):
        read_weights(tmp_path / "missing.pt")


def test_load_names_what_is_missing(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match="not a hetsurgery model package"):
        load(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_models_that_are_not_float32_round_trip_with_their_dtype(dtype: torch.dtype, tmp_path: pathlib.Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 2)).to(dtype).eval()
    x = torch.randn(3, 4, dtype=dtype)
    twin = load(save(model, tmp_path / "pkg", example_inputs=x))
    assert {t.dtype for t in twin.state_dict().values()} == {dtype}
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))
    assert read_package(tmp_path / "pkg").example_inputs[0].dtype == dtype


def test_a_float64_graph_round_trips(tmp_path: pathlib.Path) -> None:
    model = hs.zoo.mlp([8], in_features=4, num_classes=2).double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    twin = load(save(hs.trace(model, x), tmp_path / "pkg"))
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))


def test_a_model_that_does_not_run_on_its_example_inputs_is_bad_input(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match=r"does not run on the example inputs \(\(2, 5\) float32\)"):
        save(nn.Sequential(nn.Linear(4, 4)), tmp_path / "pkg", example_inputs=torch.randn(2, 5))
    assert list(tmp_path.iterdir()) == []


def test_a_generated_forward_that_fails_is_an_export_error(tmp_path: pathlib.Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = package.model_source
    monkeypatch.setattr(package, "model_source",
                        lambda *a, **k: real(*a, **k) + "\nModel.forward = lambda self, x: x.view(-1, 7)\n")
    with pytest.raises(hs.ExportError, match=r"the generated model\.py fails on the example inputs") as caught:
        save(nn.Sequential(nn.Linear(4, 4)), tmp_path / "pkg", example_inputs=torch.randn(2, 4))
    assert not isinstance(caught.value, InputError)
    assert list(tmp_path.iterdir()) == []


def test_model_py_reads_plainly(tmp_path: pathlib.Path) -> None:
    g = hs.trace(hs.zoo.transformer("manual", depth=1), X[:2])  # its forward calls torch functions
    source = (save(g, tmp_path / "pkg") / "model.py").read_text()
    assert "def forward(self, x : torch.Tensor) -> torch.Tensor:" in source
    assert "_torch_Tensor_" not in source and source.count("\nimport torch\n") == 1


def _damaged(tmp_path: pathlib.Path) -> pathlib.Path:
    return save(hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4)), tmp_path / "pkg")


def test_a_damaged_model_py_is_bad_input(tmp_path: pathlib.Path) -> None:
    folder = _damaged(tmp_path)
    code = folder / "model.py"
    code.write_text(code.read_text().replace("return layers_2", "return layers_2 +"))
    rehash(folder)  # past the digests: model.py itself fails
    with pytest.raises(InputError, match=r"model.py does not run \(SyntaxError at line \d+"):
        load(folder, trust_code=True)


def test_weights_missing_from_model_safetensors_are_bad_input(tmp_path: pathlib.Path) -> None:
    folder = _damaged(tmp_path)
    state = safetensors.torch.load_file(str(folder / "model.safetensors"))
    del state["layers.2.bias"]
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))
    rehash(folder)  # past the digests: the tensors themselves do not fit
    with pytest.raises(InputError, match=r"do not fit together .*Missing key.*layers.2.bias"):
        read_package(folder)
    with pytest.raises(InputError, match=r"cannot load model.safetensors .*Missing key.*layers.2.bias"):
        read_package(folder, trust_code=True)


def test_read_package_runs_model_py_once_and_tolerates_no_example_inputs(tmp_path: pathlib.Path) -> None:
    folder = _damaged(tmp_path)
    code = folder / "model.py"
    counter = 'pathlib.Path(__file__).with_name("runs.txt").open("a").write("x")\n'
    code.write_text(code.read_text().replace("def example_inputs(", "def example_inputs_renamed(") + counter)
    rehash(folder)
    pkg = read_package(folder, trust_code=True)
    assert pkg.example_inputs == () and pkg.model(torch.randn(1, 4)).shape == (1, 2)
    assert (folder / "runs.txt").read_text() == "x"


def test_a_failed_save_removes_the_folders_it_created(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save(hs.trace(hs.zoo.mlp([8]), torch.randn(2, 64)), tmp_path / "new" / "deeper" / "pkg")
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_that_cannot_be_created_is_bad_input(tmp_path: pathlib.Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(InputError, match=r"cannot write .*afile/pkg: .*afile is a file, not a folder"):
        save(hs.trace(hs.zoo.mlp([8]), torch.randn(2, 64)), tmp_path / "afile" / "pkg")


def test_files_that_are_no_pickle_are_not_called_pickled_modules(tmp_path: pathlib.Path) -> None:
    safetensors.torch.save_file(hs.zoo.mlp([8]).state_dict(), str(tmp_path / "renamed.pt"))
    (tmp_path / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    for name in ("renamed.pt", "garbage.pt"):
        with pytest.raises(InputError, match="is not a readable torch checkpoint") as caught:
            read_weights(tmp_path / name)
        assert "pickled" not in str(caught.value)
    torch.save(hs.zoo.mlp([8]), tmp_path / "whole.pt")
    with pytest.raises(InputError, match=r"pickled Python objects \(it needs hetsurgery.zoo.mlp.MLP"):
        read_weights(tmp_path / "whole.pt")
