"""Tutorial 4: depth surgery: units and stages, identity layers, zero-residual blocks, ReLU-segment fusion.

Models of different depth become mergeable by changing the structure of one of them (CLAFusion; Xu et al.,
Training-free Heterogeneous Model Merging). hetsurgery does it with exact passes on the traced graph.

Run: python tutorials/04_depth_surgery.py   (about 15 seconds on two CPU cores)
"""

import torch

import hetsurgery as hs
from hetsurgery.merge.fusion import fuse_relu_segment
from hetsurgery.passes import InsertIdentity, InsertZeroResidual, Pipeline
from hetsurgery.zoo.data import digits, loader
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
print("the fused stage:", fused.stage("stage0").units, "- passes:", fused.passes[0]["pass"])
