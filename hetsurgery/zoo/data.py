"""scikit-learn's 8x8 digits as the default real dataset: a fixed split, normalised, with task splits.

>>> train = digits("train")
>>> train.tensors[0].shape, train.tensors[1].shape
(torch.Size([1347, 1, 8, 8]), torch.Size([1347]))
>>> len(digits("test", classes=range(5))) < len(digits("test"))
True
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

TASKS: tuple[tuple[int, ...], tuple[int, ...]] = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
SPLIT_SEED = 0


def digits(split: str = "train", classes: Iterable[int] | None = None) -> TensorDataset:
    """1347 training / 450 test images (stratified, fixed seed), standardised with the training statistics."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    from sklearn.datasets import load_digits  # scikit-learn costs ~0.7 s to import: only when digits are read
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=SPLIT_SEED, stratify=y)
    mean, std = xtr.mean(), xtr.std()
    xs, ys = (xtr, ytr) if split == "train" else (xte, yte)
    if classes is not None:
        keep = np.isin(ys, list(classes))
        xs, ys = xs[keep], ys[keep]
    images = torch.tensor((xs - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return TensorDataset(images, torch.tensor(ys, dtype=torch.long))


def loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A deterministic loader (its shuffling uses its own seeded generator)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)
