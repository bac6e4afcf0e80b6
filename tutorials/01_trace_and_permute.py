"""Tutorial 1: trace a model into permutation groups and permute it without changing its function.

Run: python tutorials/01_trace_and_permute.py   (about five seconds on a laptop CPU)
"""

import torch
from torch import nn

import hetsurgery as hs
from hetsurgery.passes import ApplyPermutation, random_permutations

torch.manual_seed(0)
x = torch.randn(8, 1, 8, 8)  # a batch of 8x8 single-channel images, like scikit-learn's digits

# 1. Trace a CIFAR-style ResNet-20. Every set of coupled channels becomes one PermGroup: the residual
#    stream of each stage (convs, BatchNorms, 1x1 shortcuts together), and each block's inner channels.
model = hs.zoo.resnet20(in_channels=1).eval()
for m in model.modules():  # give BatchNorm real-looking statistics, so a mistake could not hide
    if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
g = hs.trace(model, x)
print(g.summary())

# 2. Permute every group that may be permuted, lower the graph back to an nn.Module, compare.
perms = random_permutations(g, seed=1)
permuted = hs.to_module(ApplyPermutation(perms)(g))
with torch.no_grad():
    before, after = model(x), permuted(x)
error = ((before - after).abs().max() / before.abs().max()).item()
moved = not torch.equal(model.conv1.weight, permuted.conv1.weight)
print(f"\npermuted {len(perms)} groups: relative output error {error:.1e}, weights moved: {moved}")
assert error < 1e-5 and moved

# 3. Attention heads are Blocks: channels move only inside a head.
vit = hs.trace(hs.zoo.transformer("manual", dim=32, heads=4), x)
print("\n" + vit.summary())


# 4. An op the rules do not know freezes the groups it touches, and says why.
class Spectral(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 6, 3, padding=1), nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.fft.fft2(self.conv(x)).real.mean(dim=(2, 3)))


print("\n" + hs.trace(Spectral(), x).summary())
