"""The Fed-LPFM study's space (METHODS.md section 2): does distilling a frozen foundation model into
lightweight clients protect the rarely observed classes?

Design factors (covered, one cell each): method x partition x student x dataset, and for Fed-LPFM
itself the teacher. Partitions: Dirichlet label skew at each of the profile's alphas, and the
paper's headline class split (`partition.kind: classes`, k classes per client, for each k in the
profile's `classes_per_client`; `class_split_methods` may restrict which methods get it). Methods:
`fed_lpfm` ((1 - lambda) CE + lambda tau^2 KL(teacher || student), the convex form, unless the
profile's `loss_form` is additive) against `fedavg`, `fedprox` and `fml` (Federated Mutual
Learning), all with the same student trained from scratch. Every cell carries the zero-shot row of
its teacher (`teacher_acc`, `teacher_balancedness`), the baselines' too, so the table can set each
method against the prior it could have used.

--controls adds the paper's two teacher ablations to every Fed-LPFM cell group: a fine-tuned
teacher (each client fine-tunes the first teacher's head on its own data for `finetune_epochs`)
and a per-client teacher (each client's drawn from `per_client_teachers`, where that names two or
more). Both keep the first teacher's zero-shot row.

Nuisance hyperparameters (tuned inside each cell, same budget): the student's learning rate and local
epochs; FedProx's mu; Fed-LPFM's lambda (uniform over [0.1, 0.9] in the convex form, log-uniform
over [0.1, 2] in the additive one) and tau (1, 2 or 4).

A class split has no alpha: its cells carry alpha 0 (a number, which the launcher and the generic
MLflow reader expect; Dirichlet's alpha -> 0 limit is one class per client) and partition 'classes'.
"""
from __future__ import annotations

import itertools
from typing import Any

import optuna

from search_spaces.common import lr_and_epochs

METHODS = ("fedavg", "fedprox", "fml", "fed_lpfm")
ALPHAS = (0.01, 0.1, 0.5, 1.0)
CLASSES_PER_CLIENT = (2,)  # McMahan et al.'s pathological split gives each client two classes
LR_RANGE = (3e-3, 1e-1)  # SGD with momentum 0.9 on a student trained from scratch
LAMBDA_RANGES = {"convex": (0.1, 0.9, False), "additive": (0.1, 2.0, True)}  # (low, high, log)
FINETUNE_EPOCHS = 3  # the fine-tuned-teacher control: epochs over each client's data


def partitions(profile) -> list[dict[str, Any]]:
    """The partition levels: Dirichlet alphas, then class splits (k classes per client)."""
    levels = [{"partition": "dirichlet", "alpha": a, "classes_per_client": "-"} for a in profile.alphas]
    levels += [{"partition": "classes", "alpha": 0.0, "classes_per_client": k}
               for k in profile.options.get("classes_per_client", ())]
    return levels


def _teacher_cells(opts: dict[str, Any], controls: bool) -> list[dict[str, Any]]:
    """Fed-LPFM's teacher levels: one per zero-shot teacher, plus the two ablations with --controls."""
    teachers = opts["teachers"]
    out = [{"teacher": t, "zero_shot": t, "teacher_variant": "zero_shot"} for t in teachers]
    if controls:
        out.append({"teacher": teachers[0], "zero_shot": teachers[0], "teacher_variant": "finetuned"})
        pool = tuple(dict.fromkeys(opts.get("per_client_teachers", teachers)))
        if len(pool) >= 2:  # a one-name list would be the consistent teacher again
            out.append({"teacher": "per-client", "zero_shot": teachers[0], "teacher_variant": "per_client",
                        "per_client": "|".join(pool)})  # one string: it travels as an MLflow tag
    return out


def cells(profile, controls: bool = False) -> list[dict[str, Any]]:
    opts = profile.options
    class_methods = opts.get("class_split_methods", METHODS)
    form = opts.get("loss_form", "convex")
    out = []
    for ds, student, part in itertools.product(opts["datasets"], opts["students"], partitions(profile)):
        methods = METHODS if part["partition"] == "dirichlet" else [m for m in METHODS if m in class_methods]
        for method in methods:
            base = {"model": student, "aggregation": method, **part, "dataset": ds}
            if method != "fed_lpfm":
                out.append({**base, "teacher": "-", "zero_shot": opts["teachers"][0], "teacher_variant": "-",
                            "form": "-"})
                continue
            out += [{**base, **t, "form": form} for t in _teacher_cells(opts, controls)]
    return out


def _short(name: str) -> str:
    return name.split(":", 1)[-1].replace("/", "-")


def partition_label(cell: dict[str, Any]) -> str:
    """'a0.1' for a Dirichlet level, 'c2' for a class split of 2 classes per client."""
    if cell.get("partition") == "classes":
        return f"c{cell['classes_per_client']}"
    return f"a{float(cell['alpha']):g}"


def _teacher_suffix(cell: dict[str, Any]) -> str:
    if cell["aggregation"] != "fed_lpfm":
        return ""
    variant = cell.get("teacher_variant", "zero_shot")
    teacher = "-perclient" if variant == "per_client" else f"-{_short(cell['teacher'])}"
    return teacher + ("-ft" if variant == "finetuned" else "") + ("-additive" if cell.get("form") == "additive" else "")


def cell_name(cell: dict[str, Any]) -> str:
    return f"{cell['aggregation']}-{_short(cell['model'])}-{cell['dataset']}-{partition_label(cell)}{_teacher_suffix(cell)}"


def _partition_overrides(cell: dict[str, Any]) -> dict[str, Any]:
    if cell.get("partition") == "classes":
        return {"partition.kind": "classes", "partition.classes_per_client": cell["classes_per_client"]}
    return {"partition.alpha": cell["alpha"]}


def _teacher_overrides(cell: dict[str, Any], profile) -> dict[str, Any]:
    out: dict[str, Any] = {"teacher.name": cell["zero_shot"]}
    if cell["aggregation"] != "fed_lpfm":
        return out
    out["method.params.form"] = cell.get("form", "convex")
    if cell.get("teacher_variant") == "finetuned":
        out["teacher.finetune_epochs"] = profile.options.get("finetune_epochs", FINETUNE_EPOCHS)
    elif cell.get("teacher_variant") == "per_client":
        out["teacher.per_client"] = cell["per_client"].split("|")
    return out


def cell_overrides(cell: dict[str, Any], profile) -> dict[str, Any]:
    return {"method.name": cell["aggregation"], **_partition_overrides(cell),
            "model.name": cell["model"], "model.tuning": "full", "model.init": "random",
            "optimizer.name": "sgd", "optimizer.momentum": 0.9, **_teacher_overrides(cell, profile),
            **profile.options["datasets"][cell["dataset"]]}  # dotted data overrides


def space(cell: dict[str, Any], max_local_epochs: int = 3) -> dict[str, optuna.distributions.BaseDistribution]:
    s = lr_and_epochs(LR_RANGE, max_local_epochs)
    if cell["aggregation"] == "fedprox":
        s["method.params.mu"] = optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    if cell["aggregation"] == "fed_lpfm":
        low, high, log = LAMBDA_RANGES[cell.get("form", "convex")]
        s["method.params.lambda"] = optuna.distributions.FloatDistribution(low, high, log=log)
        s["method.params.tau"] = optuna.distributions.CategoricalDistribution([1.0, 2.0, 4.0])
    return s
