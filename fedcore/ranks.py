"""Per-client LoRA ranks from a rank profile (model.lora): homogeneous, fractions over rank levels
(FlexLoRA's resource distributions, as in SpecTraL's main.py over levels 64, 32, 16, 8, 4), or
an explicit list. Deterministic given the run seed."""
from __future__ import annotations

import numpy as np

from fedcore.seeds import Purpose, derive_seed

# fractions over the levels sorted from largest to smallest rank
FRACTIONS = {"heavy_tail_light": (0.1, 0.1, 0.2, 0.2, 0.4), "heavy_tail_strong": (0.4, 0.2, 0.2, 0.1, 0.1)}


def largest_remainder(fractions, n: int) -> list[int]:
    """Integer counts summing to n, as close to fractions * n as rounding allows."""
    raw = np.asarray(fractions, dtype=np.float64) * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts.tolist()


def client_ranks(lcfg, num_clients: int, seed: int) -> list[int]:
    """The rank of each of the partition's clients (index = client id before empty ones are dropped)."""
    if lcfg.ranks is not None:
        return list(lcfg.ranks)
    if lcfg.rank_profile == "homogeneous":
        return [lcfg.r] * num_clients
    levels = sorted(lcfg.rank_levels, reverse=True)
    fractions = FRACTIONS.get(lcfg.rank_profile, [1 / len(levels)] * len(levels))
    pool = [lvl for lvl, c in zip(levels, largest_remainder(fractions, num_clients)) for _ in range(c)]
    perm = np.random.default_rng(derive_seed(seed, 0, 0, Purpose.RANK_ASSIGNMENT)).permutation(num_clients)
    return [pool[i] for i in perm]
