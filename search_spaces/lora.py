"""Spaces of the federated LoRA studies (METHODS.md sections 4 and 5).

`rank_collapse` (raFLoRA's question): design factors method x rank profile x Dirichlet alpha; the
learning rate (and HetLoRA's pruning strength) tuned inside each cell.
`lora_fair` (LoRA-FAIR's Tables 1 and 2): design factors method x partition setting (label skew,
feature non-IID by domain, or both); inside each cell the learning rate and, for LoRA-FAIR, its lambda
(log-uniform over [1e-4, 1]) and server steps. A profile with `protocols` (the paper profile) runs
each setting as the paper does instead (`PAPER_PROTOCOLS`): its cells fix what the paper fixes and
tune only what it leaves unsaid (`paper_space`).

Rank heterogeneity is itself a search-space parameter: `rank_profile_space` gives a categorical
distribution over `model.lora.rank_profile` for any study that wants to tune over it rather than
cover it as a design factor.
"""
from __future__ import annotations

import itertools
from typing import Any

import optuna

from search_spaces.common import lr_and_epochs

RANK_COLLAPSE_METHODS = ("fedit", "hetlora", "flexlora", "flora", "raflora")
LORA_FAIR_METHODS = ("fedit", "ffa_lora", "flora", "flexlora", "lora_fair")
RANK_PROFILES = ("uniform", "heavy_tail_light", "heavy_tail_strong")
LR_RANGE = (3e-4, 1e-2)  # AdamW on LoRA factors and the head


def rank_profile_space(profiles=RANK_PROFILES) -> dict[str, optuna.distributions.BaseDistribution]:
    return {"model.lora.rank_profile": optuna.distributions.CategoricalDistribution(list(profiles))}


def _common(max_local_epochs: int) -> dict[str, optuna.distributions.BaseDistribution]:
    return lr_and_epochs(LR_RANGE, max_local_epochs)


# --- rank_collapse -------------------------------------------------------------------------------
def rank_collapse_cells(profile) -> list[dict[str, Any]]:
    profiles = profile.options.get("rank_profiles", RANK_PROFILES)
    return [{"model": "fm_lora", "aggregation": m, "rank_profile": rp, "alpha": a}
            for m, rp, a in itertools.product(RANK_COLLAPSE_METHODS, profiles, profile.alphas)]


def rank_collapse_name(cell: dict[str, Any]) -> str:
    return f"{cell['aggregation']}-{cell['rank_profile']}-a{cell['alpha']:g}"


def _overrides(cell: dict[str, Any], profile, **extra: Any) -> dict[str, Any]:
    return {"model.name": profile.foundation_model, "model.tuning": "lora", "method.name": cell["aggregation"],
            "partition.alpha": cell["alpha"], "optimizer.name": "adamw", "optimizer.weight_decay": 0.01, **extra}


def rank_collapse_overrides(cell: dict[str, Any], profile) -> dict[str, Any]:
    return _overrides(cell, profile, **{"model.lora.rank_profile": cell["rank_profile"]})


def rank_collapse_space(cell: dict[str, Any], max_local_epochs: int) -> dict[str, Any]:
    space = _common(max_local_epochs)
    if cell["aggregation"] == "hetlora":
        space["method.params.prune_lambda"] = optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    return space


# --- lora_fair -----------------------------------------------------------------------------------
# LoRA-FAIR's two settings as its paper runs them (paper text, "Datasets" and "Training Details";
# METHODS.md 5.4), by partition kind. "Local iterations" are optimizer steps per round: each cell caps
# the steps (max_local_steps) and gives as many epochs, so that every client, even one with fewer
# samples than a batch, takes exactly that many steps (fedcore/local.py counts steps over epochs).
# `alpha` is the Dirichlet concentration inside a domain (the `domain` kind does not read it).
PAPER_PROTOCOLS: dict[str, dict[str, Any]] = {
    # Table 1, feature non-IID: one client per domain, all six every round, 2 local iterations
    "domain": {"table": 1, "alpha": 0.5, "num_clients": 6, "clients_per_round": 6, "local_steps": 2},
    # Table 2, feature + label non-IID: 5 clients per domain (Dirichlet 0.5 inside it), 18 a round, 5 iterations
    "domain_dirichlet": {"table": 2, "alpha": 0.5, "num_clients": 30, "clients_per_round": 18, "local_steps": 5},
}
# the same in both settings: mini-batch 128, client SGD at lr 0.01, LoRA rank 16, LoRA-FAIR's lambda 0.01
PAPER_BATCH, PAPER_LR, PAPER_RANK, PAPER_LAMBDA = 128, 0.01, 16, 0.01


def lora_fair_cells(profile) -> list[dict[str, Any]]:
    if "protocols" in profile.options:  # one cell per method, setting and dataset, named by the paper's table
        return [{"model": "fm_lora", "aggregation": m, "partition": kind, "alpha": proto["alpha"],
                 "table": proto["table"], "dataset": ds}
                for ds, (kind, proto), m in itertools.product(profile.options["datasets"],
                                                              profile.options["protocols"].items(), LORA_FAIR_METHODS)]
    settings = profile.options.get("partitions", [("dirichlet", a) for a in profile.alphas])
    return [{"model": "fm_lora", "aggregation": m, "partition": kind, "alpha": a}
            for (kind, a), m in itertools.product(settings, LORA_FAIR_METHODS)]


def lora_fair_name(cell: dict[str, Any]) -> str:
    setting = "domain" if cell["partition"] == "domain" else f"{cell['partition']}-a{cell['alpha']:g}"
    return f"{cell['aggregation']}-{setting}" + (f"-{cell['dataset']}" if "dataset" in cell else "")


def paper_overrides(cell: dict[str, Any], profile) -> dict[str, Any]:
    """A paper cell's protocol, as dotted overrides: its setting's clients, cohort and local steps,
    what both settings share, and its dataset's data and rounds (profile.options["datasets"])."""
    proto = profile.options["protocols"][cell["partition"]]
    out = {"partition.kind": cell["partition"], "partition.alpha": proto["alpha"],
           "partition.num_clients": proto["num_clients"], "clients_per_round": proto["clients_per_round"],
           "max_local_steps": proto["local_steps"], "local_epochs": proto["local_steps"],
           "batch_size": PAPER_BATCH, "optimizer.name": "sgd", "optimizer.lr": PAPER_LR,
           "optimizer.weight_decay": 0.0, "model.lora.r": PAPER_RANK, **profile.options["datasets"][cell["dataset"]]}
    if cell["aggregation"] == "lora_fair":
        out["method.params.lambda"] = PAPER_LAMBDA
    return out


def lora_fair_overrides(cell: dict[str, Any], profile) -> dict[str, Any]:
    if "table" in cell:
        return {"model.name": profile.foundation_model, "model.tuning": "lora", "method.name": cell["aggregation"],
                **paper_overrides(cell, profile)}
    return _overrides(cell, profile, **{"partition.kind": cell["partition"]})


def paper_space(cell: dict[str, Any]) -> dict[str, Any]:
    """What the paper leaves unsaid, the same for every method: SGD's momentum (plain, or 0.9); and
    for LoRA-FAIR the server's step count (METHODS.md 5.2: 100 to 1000, with early stopping). The
    learning rate, lambda and local steps stay at the paper's values."""
    space: dict[str, Any] = {"optimizer.momentum": optuna.distributions.CategoricalDistribution([0.0, 0.9])}
    if cell["aggregation"] == "lora_fair":
        space["method.params.server_steps"] = optuna.distributions.IntDistribution(100, 1000, log=True)
    return space


def lora_fair_space(cell: dict[str, Any], max_local_epochs: int) -> dict[str, Any]:
    if "table" in cell:
        return paper_space(cell)
    space = _common(max_local_epochs)
    if cell["aggregation"] == "lora_fair":
        space["method.params.lambda"] = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
        space["method.params.server_steps"] = optuna.distributions.IntDistribution(10, 300, log=True)
    return space
