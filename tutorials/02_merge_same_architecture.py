"""Tutorial 2: merge two ResNets trained on disjoint digit tasks, with every method, and compare.

Run: python tutorials/02_merge_same_architecture.py   (about 20 seconds on two CPU cores)
"""

import torch

import hetsurgery as hs
from hetsurgery.demo import calibration_set, train_pair
from hetsurgery.evaluate import Ensemble, task_scores
from hetsurgery.zoo.data import TASKS, digits, loader

# 1. Two small ResNets: A learns digits 0-4, B learns digits 5-9. Both heads have ten outputs.
a, b = train_pair(lambda: hs.zoo.resnet((1, 1, 1)), epochs=8, seed=0)
test = loader(digits("test"))
calibration = loader(calibration_set(), batch_size=128)  # unlabeled images of both tasks

# 2. Merge them without training. `zip` (ZipIt!) may also merge features inside one model.
result = hs.merge([a, b], calibration, method="zip", progress=False)
print(result.report)

# 3. Compare: joint accuracy over all ten digits, and per-task accuracy.
for name, model in [("model A", a), ("model B", b), ("ensemble", Ensemble([a, b])), ("zip", result.model)]:
    s = task_scores(model, test, TASKS)
    print(f"{name:<9} joint {s.joint:.3f}   task A {s.per_task[0]:.3f}   task B {s.per_task[1]:.3f}")
# `weight` (Git Re-Basin weight matching) needs no data for the matching (only for the BatchNorm reset);
# `ot` with cost="weights" transports neurons by their incoming weights instead of their activations.
for label, method, options in [("average", "average", {}), ("permute", "permute", {}), ("weight", "weight", {}),
                               ("ot", "ot", {}), ("ot-weights", "ot", {"cost": "weights"})]:
    s = task_scores(hs.merge([a, b], calibration, method=method, progress=False, **options).model, test, TASKS)
    print(f"{label:<10} joint {s.joint:.3f}   task A {s.per_task[0]:.3f}   task B {s.per_task[1]:.3f}")

# 4. The plan says which channels of A and B were zipped into each merged channel.
stream = result.plan.groups[0]
print("merged channel 0 of the stem group takes A's channels", stream.assignment(0)[0],
      "and B's channels", stream.assignment(1)[0])
assert result.model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
