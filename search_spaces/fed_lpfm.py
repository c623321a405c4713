"""The Fed-LPFM study's space (METHODS.md section 2): does distilling a frozen foundation model into
lightweight clients protect the rarely observed classes?

Design factors (covered, one cell each): method x Dirichlet alpha x student x dataset, and for
Fed-LPFM itself the teacher. Methods: `fed_lpfm` (CE + lambda tau^2 KL(teacher || student)) against
`fedavg`, `fedprox` and `fml` (Federated Mutual Learning), all with the same student trained from
scratch. Every cell carries the teacher's zero-shot row (`teacher_acc`, `teacher_balancedness`),
the baselines' too, so the table can set each method against the prior it could have used.
Nuisance hyperparameters (tuned inside each cell, same budget): the student's learning rate and local
epochs; FedProx's mu; Fed-LPFM's lambda (log-uniform over [0.1, 2]) and tau (1, 2 or 4).
"""
from __future__ import annotations

import itertools
from typing import Any

import optuna

from search_spaces.common import lr_and_epochs

METHODS = ("fedavg", "fedprox", "fml", "fed_lpfm")
ALPHAS = (0.01, 0.1, 0.5, 1.0)
LR_RANGE = (3e-3, 1e-1)  # SGD with momentum 0.9 on a student trained from scratch


def cells(profile) -> list[dict[str, Any]]:
    opts = profile.options
    out = []
    for ds, student, alpha, method in itertools.product(opts["datasets"], opts["students"], profile.alphas, METHODS):
        teachers = opts["teachers"] if method == "fed_lpfm" else opts["teachers"][:1]
        for teacher in teachers:
            out.append({"model": student, "aggregation": method, "alpha": alpha, "dataset": ds,
                        "teacher": teacher if method == "fed_lpfm" else "-", "zero_shot": teacher})
    return out


def _short(name: str) -> str:
    return name.split(":", 1)[-1].replace("/", "-")


def cell_name(cell: dict[str, Any]) -> str:
    teacher = f"-{_short(cell['teacher'])}" if cell["aggregation"] == "fed_lpfm" else ""
    return f"{cell['aggregation']}-{_short(cell['model'])}-{cell['dataset']}-a{cell['alpha']:g}{teacher}"


def cell_overrides(cell: dict[str, Any], profile) -> dict[str, Any]:
    out: dict[str, Any] = {"method.name": cell["aggregation"], "partition.alpha": cell["alpha"],
                           "model.name": cell["model"], "model.tuning": "full", "model.init": "random",
                           "optimizer.name": "sgd", "optimizer.momentum": 0.9, "teacher.name": cell["zero_shot"],
                           **profile.options["datasets"][cell["dataset"]]}  # dotted data overrides
    return out


def space(cell: dict[str, Any], max_local_epochs: int = 3) -> dict[str, optuna.distributions.BaseDistribution]:
    s = lr_and_epochs(LR_RANGE, max_local_epochs)
    if cell["aggregation"] == "fedprox":
        s["method.params.mu"] = optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    if cell["aggregation"] == "fed_lpfm":
        s["method.params.lambda"] = optuna.distributions.FloatDistribution(0.1, 2.0, log=True)
        s["method.params.tau"] = optuna.distributions.CategoricalDistribution([1.0, 2.0, 4.0])
    return s
