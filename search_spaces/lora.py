"""Spaces of the federated LoRA studies (METHODS.md sections 4 and 5).

`rank_collapse` (raFLoRA's question): design factors method x rank profile x Dirichlet alpha; the
learning rate (and HetLoRA's pruning strength) tuned inside each cell.
`lora_fair` (LoRA-FAIR's Table 1): design factors method x partition setting (label skew, feature
non-IID by domain, or both); inside each cell the learning rate and, for LoRA-FAIR, its lambda
(log-uniform over [1e-4, 1]) and server steps.

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
def lora_fair_cells(profile) -> list[dict[str, Any]]:
    settings = profile.options.get("partitions", [("dirichlet", a) for a in profile.alphas])
    return [{"model": "fm_lora", "aggregation": m, "partition": kind, "alpha": a}
            for (kind, a), m in itertools.product(settings, LORA_FAIR_METHODS)]


def lora_fair_name(cell: dict[str, Any]) -> str:
    setting = "domain" if cell["partition"] == "domain" else f"{cell['partition']}-a{cell['alpha']:g}"
    return f"{cell['aggregation']}-{setting}"


def lora_fair_overrides(cell: dict[str, Any], profile) -> dict[str, Any]:
    return _overrides(cell, profile, **{"partition.kind": cell["partition"]})


def lora_fair_space(cell: dict[str, Any], max_local_epochs: int) -> dict[str, Any]:
    space = _common(max_local_epochs)
    if cell["aggregation"] == "lora_fair":
        space["method.params.lambda"] = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
        space["method.params.server_steps"] = optuna.distributions.IntDistribution(10, 300, log=True)
    return space
