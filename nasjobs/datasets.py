"""Datasets the platform trains on, split once into train / validation / test tensors."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from nasjobs.registry import Registry


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    input_shape: tuple[int, int, int]  # channels, height, width
    num_classes: int
    train: Split
    val: Split  # what the search sees
    test: Split  # touched once, for the final report


DATASETS: Registry[Callable[[], Dataset]] = Registry("dataset", "nasjobs.datasets")


def split_indices(labels: np.ndarray, fractions: tuple[float, float, float], seed: int) -> list[np.ndarray]:
    """Stratified split into parts of the given fractions, fixed by `seed` so every experiment shares it."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        start = 0
        for i, end in enumerate(bounds):
            parts[i].extend(idx[start:end])
            start = end
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


@lru_cache(maxsize=None)
def load_digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped inside the package."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    train, val, test = split_indices(y, (0.6, 0.2, 0.2), seed=0)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    as_split = lambda idx: Split(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))  # noqa: E731
    return Dataset("digits", (1, 8, 8), 10, as_split(train), as_split(val), as_split(test))


DATASETS.register("digits", load_digits)
