"""The FedPuReL study's space (METHODS.md section 3): does fine-tuning a foundation model on
long-tailed, heterogeneous clients cost the balance of its zero-shot prior, and does purifying the
task gradient against temperature-aligned KL (plus a private residual branch) keep it?

Design factors (covered, one cell each): method x imbalance factor of the long-tailed pool x
heterogeneity (the pooled hierarchical partition's Dirichlet concentration) x dataset. Methods:
`fedpurel` and plain `fedavg` fine-tuning of the same LoRA model with its zero-shot head; the
zero-shot model itself is the teacher row every run reports (it is the fine-tuned model's start).
`--controls` adds the paper's ablation: FedPuReL with plain KL instead of TKL.
Nuisance hyperparameters (same budget per cell): the learning rate; for FedPuReL the personal
lambda (0.5 to 0.99) and the projection strength (0 to 1).
"""
from __future__ import annotations

import itertools
from typing import Any

import optuna

from search_spaces.common import lr_and_epochs

IMBALANCE_FACTORS = (10, 50, 100)
BETAS = (0.1, 0.5, 1.0, 5.0)
LR_RANGE = (1e-4, 1e-2)  # SGD (momentum 0.9, weight decay 5e-4 as in the paper's code; lr 1e-3) on LoRA factors under scale-100 logits

# CIFAR-100's superclass of each fine class, in the fine labels' alphabetical order (apple, aquarium_fish,
# baby, ...): the coarse level of the hierarchical partition (dataset metadata)
CIFAR100_COARSE = [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
                   0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4,
                   18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19,
                   5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]


def cells(profile, controls: bool = False) -> list[dict[str, Any]]:
    methods = [("fedavg", "-"), ("fedpurel", "tkl")] + ([("fedpurel", "kl")] if controls else [])
    out = []
    for ds, imb, beta, (method, align) in itertools.product(profile.options["datasets"],
                                                            profile.options["imbalance_factors"], profile.alphas, methods):
        out.append({"model": "fm_lora", "aggregation": method, "align": align, "imbalance": imb, "alpha": beta,
                    "dataset": ds})
    return out


def cell_name(cell: dict[str, Any]) -> str:
    method = "fedpurel-kl" if cell["align"] == "kl" else cell["aggregation"]
    return f"{method}-{cell['dataset']}-if{cell['imbalance']:g}-b{cell['alpha']:g}"


def cell_overrides(cell: dict[str, Any], profile) -> dict[str, Any]:
    out: dict[str, Any] = {"method.name": cell["aggregation"], "partition.kind": "pooled", "partition.alpha": cell["alpha"],
                           "data.long_tail_if": float(cell["imbalance"]), "model.name": profile.foundation_model,
                           "model.tuning": "lora", "model.head": "zero_shot", "optimizer.name": "sgd",
                           "optimizer.momentum": 0.9, "optimizer.weight_decay": 5e-4,
                           **profile.options["datasets"][cell["dataset"]]}  # dotted data (and eval) overrides
    if cell["align"] == "kl":
        out["method.params.align"] = "kl"
    return out


def space(cell: dict[str, Any], max_local_epochs: int = 1) -> dict[str, optuna.distributions.BaseDistribution]:
    s = lr_and_epochs(LR_RANGE, max_local_epochs)
    if cell["aggregation"] == "fedpurel":
        s["method.params.lambda"] = optuna.distributions.FloatDistribution(0.5, 0.99)
        s["method.params.strength"] = optuna.distributions.FloatDistribution(0.0, 1.0)
    return s
