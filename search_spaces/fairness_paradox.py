"""The FM Fairness Paradox study's space (METHODS.md section 1).

Design factors (covered, one cell each): model x alpha x aggregation. Nuisance hyperparameters
(tuned inside each cell with the same budget): the learning rate of the model's optimizer, local
epochs, and beta for FedAvgW.

Model levels:
- `textcnn`: TextCNN from scratch (the paper's small model).
- `fm_lora`: the foundation model, pretrained, LoRA on query/value (the paper's FM arm).
Controls (`--controls`), which separate pretraining priors from architecture, capacity and
adaptation method:
- `fm_full`: the same encoder, pretrained, every weight fine-tuned.
- `fm_scratch`: the same encoder architecture, randomly initialised, every weight trained.
FedAvgW weights LoRA factors, so it is crossed with `fm_lora` only.
"""
from __future__ import annotations

import itertools
from typing import Any

import optuna

MODELS = ("textcnn", "fm_lora")
CONTROL_MODELS = ("fm_full", "fm_scratch")
ALPHAS = (0.1, 0.5, 1.0, 5.0)
AGGREGATIONS = ("fedavg", "fedavgw")


def cells(controls: bool = False, alphas=ALPHAS) -> list[dict[str, Any]]:
    models = MODELS + (CONTROL_MODELS if controls else ())
    out = []
    for model, alpha, agg in itertools.product(models, alphas, AGGREGATIONS):
        if agg == "fedavgw" and model != "fm_lora":
            continue
        out.append({"model": model, "alpha": alpha, "aggregation": agg})
    return out


def cell_name(cell: dict[str, Any]) -> str:
    return f"{cell['model']}-a{cell['alpha']:g}-{cell['aggregation']}"


def cell_overrides(cell: dict[str, Any], foundation_model: str) -> dict[str, Any]:
    """Dotted config overrides that put a run in this design cell."""
    model = cell["model"]
    out: dict[str, Any] = {"partition.alpha": cell["alpha"], "method.name": cell["aggregation"]}
    if model == "textcnn":
        out.update({"model.name": "textcnn", "optimizer.name": "sgd", "optimizer.momentum": 0.9})
    else:
        out.update({"model.name": foundation_model, "optimizer.name": "adamw", "optimizer.weight_decay": 0.01,
                    "model.tuning": "lora" if model == "fm_lora" else "full",
                    "model.init": "random" if model == "fm_scratch" else "pretrained"})
    return out


# learning-rate ranges per model level: SGD for TextCNN (paper 0.01), AdamW for the encoder
# (paper 5e-5 for LoRA on DistilBERT; LoRA tolerates and usually needs larger steps)
LR_RANGES = {"textcnn": (3e-3, 1e-1), "fm_lora": (5e-5, 3e-3), "fm_full": (1e-5, 3e-4), "fm_scratch": (5e-5, 1e-3)}


def nuisance_space(cell: dict[str, Any], max_local_epochs: int = 3) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions over the dotted config keys tuned inside the cell."""
    lo, hi = LR_RANGES[cell["model"]]
    space: dict[str, optuna.distributions.BaseDistribution] = {
        "optimizer.lr": optuna.distributions.FloatDistribution(lo, hi, log=True),
    }
    if max_local_epochs > 1:
        space["local_epochs"] = optuna.distributions.IntDistribution(1, max_local_epochs)
    if cell["aggregation"] == "fedavgw":
        space["method.params.beta"] = optuna.distributions.FloatDistribution(0.0, 1.0)
    return space
