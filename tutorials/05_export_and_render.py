"""Tutorial 5: save a merged model as a package, load it without hetsurgery, export it to ONNX, draw it.

Run: python tutorials/05_export_and_render.py   (about 20 seconds on two CPU cores)
"""

import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import safetensors.torch
import torch

import hetsurgery as hs
from hetsurgery import export
from hetsurgery.demo import calibration_set
from hetsurgery.evaluate import task_scores
from hetsurgery.zoo.data import TASKS, digits, loader
from hetsurgery.zoo.train import train

out = Path(tempfile.mkdtemp(prefix="hetsurgery-tutorial-05-"))

# 1. Two MLPs of different widths, trained on disjoint digit tasks, zipped into one without training.
torch.manual_seed(1)
a = train(hs.zoo.mlp([64, 64]), digits("train", TASKS[0]), epochs=8, seed=1)
torch.manual_seed(2)
b = train(hs.zoo.mlp([96, 48]), digits("train", TASKS[1]), epochs=8, seed=2)
merged = hs.merge([a, b], loader(calibration_set(), 128), method="zip", progress=False)
score = task_scores(merged.model, loader(digits("test")), TASKS)
print(f"zip of MLP 64-64 and MLP 96-48: joint accuracy {score.joint:.3f}, per task {score.per_task[0]:.3f} / "
      f"{score.per_task[1]:.3f}")

# 2. A package is a folder: the generated code, the weights, the plan and a report. It is written beside its
#    destination and renamed into place, after loading it back and comparing outputs. MergeResult.save keeps the
#    width plan, a depth plan and the passes that balanced each model (export.save takes any graph or module).
folder = merged.save(out / "zip-mlp", report=f"joint accuracy {score.joint:.3f}")
print("package:", sorted(p.name for p in folder.iterdir()))
source = (folder / "model.py").read_text()
print("model.py, the forward:\n" + source[source.index("    def forward"):source.index("\n\n\ndef load")])

# 3. model.py needs only torch and safetensors: a fresh Python that never imports hetsurgery loads it.
x = digits("test").tensors[0][:16]
safetensors.torch.save_file({"x": x}, str(out / "x.safetensors"))
fresh = (f"import sys, safetensors.torch; sys.path.insert(0, {str(folder)!r}); import model; "
         f"x = safetensors.torch.load_file({str(out / 'x.safetensors')!r})['x']; "
         f"safetensors.torch.save_file({{'y': model.load()(x).detach()}}, {str(out / 'y.safetensors')!r}); "
         "print('hetsurgery imported:', any(m.startswith('hetsurgery') for m in sys.modules))")
print(subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True, check=True).stdout.strip())
with torch.no_grad():
    same = torch.equal(safetensors.torch.load_file(str(out / "y.safetensors"))["y"], merged.model(x))
print("outputs identical after the round trip:", same)
print("the plan came back too:", export.read_package(folder).plan.method)

# 4. ONNX: the dynamo exporter, then onnxruntime at the example's batch size and a second one.
report = export.to_onnx(merged.model, x, folder / "model.onnx")
print("onnx:", report)

# 5. Pictures: the merged graph's groups, and which neurons of A and B went into each merged neuron of
#    group 0. Without Graphviz's `dot` you get the .gv source and a note on how to install it.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pictures = [export.render(merged.graph, out / "graph.svg"),
                export.render(merged.plan, out / "plan-group-0.svg", group=0, names=("A 64-64", "B 96-48"))]
for pic in pictures:
    print("picture:" if pic.rendered else "graphviz source (no dot):", pic.path)

# 6. Weights are read without unpickling: a state_dict is fine, a whole pickled module is refused.
torch.save(a.state_dict(), out / "a.pt")
torch.save(a, out / "a-module.pt")
print("state_dict keys:", list(export.read_weights(out / "a.pt"))[:2])
try:
    export.read_weights(out / "a-module.pt")
except export.InputError as err:
    print("refused:", str(err).split(". ")[0])
