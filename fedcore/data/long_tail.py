"""Long-tailed training pools (FedPuReL's construction, docs/methods.md "Foundation-model priors").

Class c of C keeps n_c = floor(n_max * IF^(-c / (C - 1))) samples, n_max = N / C, with IF the
imbalance factor (the code's `imb_factor` is 1 / IF): class 0 is the head, class C - 1 the tail
with n_max / IF samples. CIFAR-100 with IF 100 gives 500 down to 5 images per class, 10,847 in all.
A class with fewer samples than its n_c keeps all it has. The test set stays balanced.
"""
from __future__ import annotations

import math

import numpy as np

from fedcore.seeds import Purpose


def long_tail_counts(num_samples: int, num_classes: int, imbalance_factor: float) -> list[int]:
    if imbalance_factor < 1:
        raise ValueError(f"imbalance factor must be >= 1, got {imbalance_factor}")
    n_max = num_samples / num_classes
    if num_classes == 1:
        return [int(n_max)]
    return [int(math.floor(n_max * imbalance_factor ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def long_tail_subsample(labels: np.ndarray, imbalance_factor: float, seed: int) -> np.ndarray:
    """Sorted indices of a long-tailed subset of `labels` (classes in index order, head first)."""
    num_classes = int(labels.max()) + 1
    counts = long_tail_counts(len(labels), num_classes, imbalance_factor)
    rng = np.random.default_rng([seed, Purpose.LONG_TAIL])
    picked = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        picked.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)
