"""Assembling a run: its data (with the teacher's logits where the config has a teacher)."""
from __future__ import annotations

from fedcore.config import RunConfig
from fedcore.data import FederatedData, load_federated, read_pool
from fedcore.teacher import attach_teacher


def load_data(cfg: RunConfig) -> FederatedData:
    """The run's federated data: the data layer's tensors, then the teacher's logits over them."""
    pool = read_pool(cfg)
    data = load_federated(cfg, pool)
    if cfg.teacher is not None:
        attach_teacher(cfg, pool, data)
    return data
