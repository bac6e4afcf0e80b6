"""Tutorial 4: depth surgery and merging models of different depth.

Models of different depth become mergeable by changing the structure of one of them (CLAFusion; Xu et al.,
Training-free Heterogeneous Model Merging). hetsurgery does it with exact passes on the traced graph: units and
stages, identity layers, zero-residual blocks, ReLU-segment fusion; then depth plans (CLA, SMA, LMA) on
linear CKA drive them inside ``merge``.

Run: python tutorials/04_depth_surgery.py   (about 40 seconds on two CPU cores)
"""

import tempfile
from pathlib import Path

import torch

import hetsurgery as hs
from hetsurgery.evaluate import task_scores
from hetsurgery.export import render
from hetsurgery.export.depth_pictures import cka_heatmap
from hetsurgery.merging.fusion import fuse_relu_segment
from hetsurgery.passes import InsertIdentity, InsertZeroResidual, Pipeline
from hetsurgery.zoo.data import TASKS, digits, loader
from hetsurgery.zoo.train import train

torch.manual_seed(0)
x = torch.randn(16, 1, 8, 8)

# 1. Units and stages are found in the dataflow graph: a ResNet-20 has three stages of three blocks; the first
#    block of stages 2 and 3 changes the shape (stride 2, projection shortcut), so it is fixed.
resnet = hs.zoo.resnet20().eval()
g = hs.trace(resnet, x[:2])
print("\n".join(g.summary().splitlines()[-5:]))

# 2. A zero-residual block (a copy of its neighbour whose branch ends in a zeroed BatchNorm) and, in an MLP, an
#    identity layer (Linear = I after a ReLU): the function does not change.
deeper = Pipeline((InsertZeroResidual("stage0", (3,)), InsertZeroResidual("stage2", (1,))))(g)
with torch.no_grad():
    print(f"ResNet-20 + 2 zero-residual blocks: {len(g.units)} -> {len(deeper.units)} units, output difference "
          f"{(resnet(x) - hs.to_module(deeper)(x)).abs().max().item():.1e}")
mlp = hs.zoo.mlp([32, 32]).eval()
m = hs.trace(mlp, x[:2])
wider = InsertIdentity("stage0", (1, 2))(m)
with torch.no_grad():
    print(f"MLP + 2 identity layers: stage0 has {len(wider.stage('stage0'))} units, output difference "
          f"{(mlp(x) - hs.to_module(wider)(x)).abs().max().item():.1e}")
try:
    InsertIdentity("stage0", (0,))(m)  # before the first layer: the input may be negative, ReLU(I x) != x
except hs.PassError as err:
    print("refused:", str(err).split(": ", 1)[1])

# 3. Fusing a ReLU segment (CLAFusion's "merge layers"): W2 D W1 with D estimated on calibration data. It is an
#    approximation; the report says what it costs on the data.
trained = train(hs.zoo.mlp([64, 48, 32]), digits("train"), epochs=8)
test = list(loader(digits("test"), 128))
t = hs.trace(trained, test[0][0][:2])
for estimator in ("sign_of_sum", "majority", "average_sign"):
    fused, report = fuse_relu_segment(t, ("layers_2", "layers_4"), test, estimator)
    print(report)
print("the fused stage:", fused.stage("stage0").units, "- passes:", fused.passes[0].name)

# 4. Merging models of different depth (and width): a deep narrow MLP trained on digits 0-4 and a shallow wide one
#    on 5-9. The depth plan aligns their hidden layers on linear CKA (CLA, SMA or LMA), balances them (identity
#    layers into the shallow one, or fused layers in the deep one), and a width method merges what corresponds.
torch.manual_seed(1)
deep = train(hs.zoo.mlp([64, 64, 64, 64]), digits("train", TASKS[0]), epochs=8, seed=1)
torch.manual_seed(2)
shallow = train(hs.zoo.mlp([128, 96]), digits("train", TASKS[1]), epochs=8, seed=2)
calibration = list(loader(digits("train"), 128))
for name, m in (("deep 64-64-64-64 (0-4)", deep), ("shallow 128-96 (5-9)", shallow)):
    print(f"{name:<26} joint {task_scores(m, test, TASKS).joint:.3f}")
for depth in ("cla", "sma", "lma"):
    for balance in ("add", "merge"):
        r = hs.merge([deep, shallow], calibration, method="zip", depth=depth, balance=balance, progress=False)
        print(f"{depth} {balance:<5} zip               joint {task_scores(r.model, test, TASKS).joint:.3f}  "
              f"map {r.depth.models[0].stages[0].map}")
r = hs.merge([deep, shallow], calibration, method="zip", depth="lma", progress=False)
print(r.report)
out = Path(tempfile.mkdtemp(prefix="hetsurgery-tutorial-04-"))
print("pictures:", render(r.depth, out / "depth-plan.svg").path, cka_heatmap(r.depth, out / "cka.png"))
