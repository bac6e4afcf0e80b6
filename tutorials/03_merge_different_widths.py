"""Tutorial 3: merge models of different widths: zero padding, elastic zipping, OT and MAL.

Run: python tutorials/03_merge_different_widths.py   (about 30 seconds on two CPU cores)
"""

import torch

import hetsurgery as hs
from hetsurgery.demo import calibration_set
from hetsurgery.evaluate import task_scores
from hetsurgery.passes import ApplyPermutation, PadWidth, Pipeline, random_permutations
from hetsurgery.zoo.data import TASKS, digits, loader
from hetsurgery.zoo.train import train

torch.manual_seed(0)
x = torch.randn(64, 1, 8, 8)

# 1. PadWidth grows a group with zeros; the function does not change. Groups whose consumers normalise
#    over the channels (LayerNorm) refuse, and say so.
model = hs.zoo.resnet((1, 1, 1)).eval()
g = hs.trace(model, x[:2])
wide = Pipeline(tuple(PadWidth(grp.id, 2 * grp.size) for grp in g.groups if grp.pad_ok))(g)
wide = ApplyPermutation(random_permutations(wide, seed=0))(wide)
twin = hs.to_module(wide).eval()  # twice as wide, permuted, same function
with torch.no_grad():
    print("widths", [grp.size for grp in g.groups], "->", [grp.size for grp in wide.groups],
          f"output difference {(model(x) - twin(x)).abs().max().item():.1e}")
try:
    vit = hs.trace(hs.zoo.transformer("manual"), x[:2])
    PadWidth(0, 64)(vit)
except hs.PassError as err:
    print("refused:", str(err).split(". Pick")[0])

# 2. Elastic zipping of the model with its wide twin gives the model back (at the wider width).
r = hs.merge([model, twin], [x], method="zip", reset_bn=False, progress=False)
with torch.no_grad():
    print(f"zip(model, wide twin): output difference {(model(x) - r.model(x)).abs().max().item():.1e}")

# 3. Two real models of different widths, trained on disjoint digit tasks.
torch.manual_seed(1)
a = train(hs.zoo.mlp([64, 64]), digits("train", TASKS[0]), epochs=10, seed=1)
torch.manual_seed(2)
b = train(hs.zoo.mlp([128, 96]), digits("train", TASKS[1]), epochs=10, seed=2)
test, calibration = loader(digits("test")), loader(calibration_set(), 128)
for name, m in [("model A 64-64", a), ("model B 128-96", b)]:
    print(f"{name:<22} joint {task_scores(m, test, TASKS).joint:.3f}")
for method, width in [("zip", "max"), ("zip", "min"), ("ot", "max"), ("mal-pad", "max"), ("mal", "max")]:
    merged = hs.merge([a, b], calibration, method=method, width=width, progress=False)
    widths = [grp.size for grp in merged.graph.groups if grp.perm_ok]
    print(f"{method + ' ' + width:<22} joint {task_scores(merged.model, test, TASKS).joint:.3f}  widths {widths}")

# 4. MAL reports, per group, its alternating LAP solves.
mal = hs.merge([a, b], calibration, method="mal", width="max", progress=False).plan.groups[0].mal[0]  # a MalReport
print(f"mal group 0: {mal.iterations} updates, objective {mal.objective[0]:.2f} -> {mal.objective[-1]:.2f},"
      f" converged {mal.converged}")
