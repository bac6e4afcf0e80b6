"""A short deterministic trainer for the zoo's small models (seconds on a CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from hetsurgery.zoo.data import loader


def train(model: nn.Module, dataset: TensorDataset, *, epochs: int = 20, lr: float = 3e-3, batch_size: int = 64,
          weight_decay: float = 1e-4, seed: int = 0, progress: bool = False) -> nn.Module:
    """Adam with a cosine schedule and cross-entropy over all of the model's outputs; returns the model in eval.

    Seeded: the same model, data and seed give the same weights.
    """
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    data = loader(dataset, batch_size, shuffle=True, seed=seed)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(data))
    model.train()
    for _ in tqdm(range(epochs), desc="train", unit="epoch", disable=not progress, leave=False):
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    return model.eval()
