"""Tutorial 6: model assembly. A base model absorbs units of donors of other widths and depths (MAL).

Model Assembly Learning (Zhang et al. 2025): a base keeps its architecture, its input and its output, and takes in,
unit by unit and with a factor λ, the parameters of models from an open zoo, aligned to its channels (zero padding
and alternating LAPs where the widths differ; a depth plan where the depths differ), for as long as its own task
survives. ``find_lambda_threshold`` tells how far that is.

Run: python tutorials/06_model_assembly.py   (about 20 seconds on two CPU cores)
"""

import tempfile
from pathlib import Path

import torch

import hetsurgery as hs
from hetsurgery.evaluate import task_scores
from hetsurgery.export import read_assembly
from hetsurgery.zoo.data import TASKS, digits, loader
from hetsurgery.zoo.train import train

torch.manual_seed(0)
test = list(loader(digits("test"), 256))
base_task = list(loader(digits("test", TASKS[0]), 256))
calibration = [x for x, _ in loader(digits("train"), 128)][:6]

# 1. A base (MLP 64-64 on digits 0-4) and two donors: a wider one on digits 5-9, a deeper one on all digits.
base = train(hs.zoo.mlp([64, 64]), digits("train", TASKS[0]), epochs=10, seed=0)
wide = train(hs.zoo.mlp([128, 96]), digits("train", TASKS[1]), epochs=10, seed=1)
deep = train(hs.zoo.mlp([48, 48, 48]), digits("train"), epochs=10, seed=2)

# 2. Units are what the base absorbs: its layers (and residual blocks), by key.
g = hs.trace(base, calibration[0][:2])
print("the base's units:", [u.key for u in g.units])

# 3. λ = 0 is the base itself, whatever the donor.
same = hs.assemble(base, [wide], calibration, lam=0.0, progress=False)
with torch.no_grad():
    x = test[0][0]
    print("λ = 0 gives the base back exactly:", torch.equal(base(x), same.model(x)))

# 4. Each donor gives its own units with its own λ; the deeper donor needs a depth plan (its three hidden layers
#    meet the base's two: LMA on linear CKA, a segment of two layers fused into one). Donors go in one after another.
r = hs.assemble(base, [hs.Donor(wide, layers=["layers_4"], lam=0.3, name="wide (5-9)"),
                       hs.Donor(deep, lam={"layers_0": 0.2, "layers_2": 0.2}, name="deep (0-9)")],
                calibration, depth="lma", progress=False)
print(r)
for name, model in (("base", base), ("assembled", r.model)):
    s = task_scores(model, test, TASKS)
    print(f"{name:>9}: joint {s.joint:.3f}, digits 0-4 {s.per_task[0]:.3f}, digits 5-9 {s.per_task[1]:.3f}")

# 5. How far can the base lean towards the wide donor before its own task (digits 0-4) drops by a point?
out = Path(tempfile.mkdtemp())
t = hs.find_lambda_threshold(base, wide, base_task, layers="all", calibration=calibration, plot=out / "lambda.png")
print(f"threshold λ* = {t.threshold:.3f} (base task {t.base_value:.3f}), loss barrier {t.barrier:.2f}; "
      f"{len(t.probes)} points evaluated; picture: {t.plot}")

# 6. The assembled model saves as a package; plan.json keeps which donor gave which unit, with which λ.
folder = r.save(out / "assembled")
record = read_assembly(folder)
assert record is not None
print("package:", folder, "-", [(u["donor"], u["unit"], u["lam"], u["how"]) for u in record["units"]])
