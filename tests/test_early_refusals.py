"""Bad input is refused before any work, with a message that names the model as the user named it: a value
of the wrong kind (``reset_bn=1.5``, a path where a model belongs), and a model a package could not hold
(``math.sqrt`` in its forward) when the caller means to save the result."""

from __future__ import annotations

import math
import pathlib

import pytest
import torch
import yaml
from torch import nn

import hetsurgery as hs

X = torch.randn(32, 64)


class Scaled(nn.Module):
    """An MLP whose forward divides by ``math.sqrt`` of a width: it traces and merges, but ``graph.json`` cannot
    name ``math.sqrt``, so a package cannot hold it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)) / math.sqrt(x.shape[-1]))


@pytest.mark.parametrize("reset_bn", [1.5, -3, 0, 1, "yes", None, math.nan])
@pytest.mark.parametrize("entry", ["merge", "assemble", "find_lambda_threshold"])
def test_reset_bn_takes_a_flag_or_a_whole_number_of_samples(entry: str, reset_bn: object) -> None:
    a, b = hs.zoo.mlp([8]), hs.zoo.mlp([8])
    run = {"merge": lambda: hs.merge([a, b], [X], reset_bn=reset_bn, progress=False),
           "assemble": lambda: hs.assemble(a, [b], [X], reset_bn=reset_bn, progress=False),
           "find_lambda_threshold": lambda: hs.find_lambda_threshold(a, b, [(X, torch.zeros(32).long())],
                                                                     layers="all", reset_bn=reset_bn)}[entry]
    with pytest.raises(hs.MergeInputError, match=r"^reset_bn must be True, False or a whole number of samples "
                                                 r"\(at least 2\), not "):
        run()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("reset_bn", [True, False, 2, 64])
def test_reset_bn_accepts_flags_and_sample_counts(reset_bn: bool | int) -> None:
    a, b = hs.zoo.mlp([8], batch_norm=True), hs.zoo.mlp([8], batch_norm=True)
    assert hs.merge([a, b], [X], reset_bn=reset_bn, progress=False).model(X).shape == (32, 10)


@pytest.mark.parametrize(("models", "says"), [
    (lambda a: [a, "b.pt"], r"^model 1 is a str \('b\.pt'\), not an nn\.Module: build the model and load its weights"),
    (lambda a: [a, None], r"^model 1 is a NoneType \(None\), not an nn\.Module"),
    (lambda a: a, r"^models must be a list of nn\.Modules, not a MLP"),
    (lambda a: "ab", r"^models must be a list of nn\.Modules, not a str"),
])
def test_something_other_than_a_model_is_refused_with_its_position(models: object, says: str) -> None:
    with pytest.raises(hs.MergeInputError, match=says):
        hs.merge(models(hs.zoo.mlp([8])), [X], progress=False)  # type: ignore[operator]
    with pytest.raises(hs.MergeInputError, match=says):
        hs.align(models(hs.zoo.mlp([8])), [X], progress=False)  # type: ignore[operator]


def test_assemble_refuses_a_base_that_is_not_a_model() -> None:
    with pytest.raises(hs.MergeInputError, match=r"^the base is a str \('base\.pt'\), not an nn\.Module"):
        hs.assemble("base.pt", [hs.zoo.mlp([8])], [X], progress=False)  # type: ignore[arg-type]


def test_messages_name_the_models_as_the_user_named_them() -> None:
    a, b = hs.zoo.mlp([8]), hs.zoo.mlp([8])
    with torch.no_grad():
        b.layers[0].weight[0, 0] = math.nan
    with pytest.raises(hs.MergeInputError, match=r"^teacher B: layers\.0\.weight holds NaN or Inf"):
        hs.merge([a, b], [X], names=["student A", "teacher B"], progress=False)
    deep, shallow = hs.zoo.mlp([8, 8, 8]), hs.zoo.mlp([8])
    with pytest.raises(hs.MergeInputError, match=r"shallow one differs in depth from deep one \(stage0: 3 layers in deep one, 1 in "
                                                 r"shallow one\)"):
        hs.merge([deep, shallow], [X], names=["deep one", "shallow one"], progress=False)
    with pytest.raises(hs.MergeInputError, match=r"^names must be 2 non-empty strings, one per model"):
        hs.merge([a, b], [X], names=["only one"], progress=False)


def test_assembly_messages_name_the_base_and_the_donor_never_a_graph_module() -> None:
    class Other(nn.Module):  # the donor's layers differ in kind from the base's: the correspondence refuses it
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(64, 8), nn.GELU(), nn.Linear(8, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x.flatten(1))

    with pytest.raises(hs.MergeInputError) as info:
        hs.assemble(hs.zoo.mlp([8]), [hs.Donor(Other(), name="gelu donor")], [X], base_name="my base",
                    align="permute", progress=False)
    assert "GraphModule" not in str(info.value) and "gelu donor" in str(info.value), str(info.value)


def test_a_model_a_package_cannot_hold_is_refused_right_after_tracing_when_the_result_will_be_saved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = Scaled(), Scaled()
    r = hs.merge([a, b], [X], progress=False)  # merging itself is fine: nothing is saved
    assert r.model(X).shape == (32, 10)

    def no_statistics(*args: object, **kwargs: object) -> None:
        raise AssertionError("the calibration statistics were collected before the refusal")

    monkeypatch.setattr("hetsurgery.merging.driver.collect_stats", no_statistics)
    with pytest.raises(hs.MergeInputError, match=r"^model 0 \(Scaled\) cannot be saved as a package, so neither can "
                                                 r"the merged model: node 'sqrt' calls math\.sqrt"):
        hs.merge([a, b], [X], saveable=True, progress=False)
    with pytest.raises(hs.MergeInputError, match=r"^base cannot be saved as a package"):
        hs.assemble(a, [b], [X], saveable=True, progress=False)


SCALED_MODULE = '''
import math, torch
from torch import nn

class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.b(torch.relu(self.a(x)) / math.sqrt(x.shape[-1]))

def scaled():
    return Scaled()
'''


@pytest.mark.parametrize("command", ["merge", "assemble"])
def test_the_command_line_refuses_a_model_no_package_can_hold_before_merging(
        command: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hetsurgery.cli import main

    (tmp_path / "scaled_model.py").write_text(SCALED_MODULE)
    model = {"factory": "scaled_model:scaled"}
    config = {"input_shape": [1, 8, 8], "calibration": {"dataset": "digits"}}
    config.update({"models": [{**model, "name": "left"}, {**model, "name": "right"}]} if command == "merge" else
                  {"base": {**model, "name": "left"}, "donors": [{**model, "name": "right"}]})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main([command, str(tmp_path / "run.yaml"), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "left cannot be saved as a package" in err and "math.sqrt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
