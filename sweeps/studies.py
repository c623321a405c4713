"""Named studies and their profiles.

A study = design cells to cover, a nuisance space tuned inside each cell with the same budget,
objectives, an ASHA setting, and profiles (smoke / local / paper) that fix the data, the
foundation model and the budget. Flags of `python -m sweeps.launch` override profile values.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from search_spaces import fairness_paradox as fp

AG_NEWS_CLASSES = "World,Sports,Business,Sci/Tech"


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    base: dict[str, Any]  # nested RunConfig dict shared by every trial
    foundation_model: str
    alphas: tuple[float, ...]
    rounds: Callable[[float], int]  # rounds for a cell's alpha
    num_samples: int  # Optuna trials per design cell
    seeds: int  # re-runs of each cell's best configuration
    max_local_epochs: int = 3
    grace_rounds: int = 2  # ASHA grace period, in rounds
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model level, dotted keys
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0


@dataclass(frozen=True)
class Study:
    name: str
    summary: str
    profiles: dict[str, Profile]
    cells: Callable[[bool, tuple[float, ...]], list[dict[str, Any]]]
    cell_name: Callable[[dict[str, Any]], str]
    cell_overrides: Callable[[dict[str, Any], str], dict[str, Any]]
    space: Callable[[dict[str, Any], int], dict[str, Any]]
    objectives: tuple[str, ...] = ("worst_client_acc", "balancedness")
    asha_metric: str = "worst_client_acc"
    notes: tuple[str, ...] = field(default_factory=tuple)


def ag_news_base(data_dir: str | None) -> dict[str, Any]:
    """AG News from a local copy (train.csv/test.csv as in ../shared/data/ag_news) or the hub."""
    if data_dir is None:
        return {"source": "hf:ag_news"}
    d = Path(data_dir).expanduser().resolve()
    return {"source": f"csv:{d / 'train.csv'}?text=text&label=label&class_names={AG_NEWS_CLASSES}",
            "test_source": f"csv:{d / 'test.csv'}?header=none&text=2&label=0&label_offset=1"}


FAIRNESS_PROFILES = {
    "smoke": Profile(
        "smoke", "offline: synthetic topics corpus, MiniLM, 5 clients, 3 rounds; about 6 minutes on 2 CPU cores",
        base={"data": {"source": "synthetic:topics?n=1500&test=200", "max_len": 16},
              "partition": {"num_clients": 5}, "eval": {"protocol": "class_filtered", "batch_size": 128},
              "batch_size": 16, "max_local_steps": 6, "torch_threads": 1},
        foundation_model="minilm-l6", alphas=(0.1, 1.0), rounds=lambda a: 3, num_samples=2, seeds=2,
        max_local_epochs=1, grace_rounds=2,
        # a TextCNN step costs ~1/30 of a MiniLM step on a CPU: give it enough steps to learn
        model_overrides={"textcnn": {"max_local_steps": 40}}),
    "local": Profile(
        "local", "AG News (hub, or --data-dir), MiniLM, 10 clients; about an hour on a laptop CPU",
        base={"data": {"source": "hf:ag_news", "max_len": 64, "max_train_samples": 8000, "max_test_samples": 1000},
              "partition": {"num_clients": 10}, "eval": {"protocol": "class_filtered", "batch_size": 128},
              "batch_size": 16, "max_local_steps": 30},
        foundation_model="minilm-l6", alphas=fp.ALPHAS, rounds=lambda a: 10 if a <= 0.1 else 5,
        num_samples=3, seeds=3, max_local_epochs=2, grace_rounds=2),
    "paper": Profile(
        "paper", "the paper's scale: DistilBERT, full AG News, 10 clients, 50/20 rounds, 5 seeds, GPUs",
        base={"data": {"source": "hf:ag_news", "max_len": 64}, "partition": {"num_clients": 10},
              "eval": {"protocol": "class_filtered", "batch_size": 512}, "batch_size": 16, "device": "cuda"},
        foundation_model="distilbert-base-uncased", alphas=fp.ALPHAS, rounds=lambda a: 50 if a <= 0.1 else 20,
        num_samples=8, seeds=5, max_local_epochs=5, grace_rounds=5, gpus_per_trial=0.25),
}

STUDIES: dict[str, Study] = {
    "fairness_paradox": Study(
        "fairness_paradox",
        "FM Fairness Paradox: TextCNN vs foundation model + LoRA by Dirichlet alpha, FedAvg vs FedAvgW "
        "(--controls adds fm_full and fm_scratch)",
        FAIRNESS_PROFILES, fp.cells, fp.cell_name, fp.cell_overrides, fp.nuisance_space),
}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise KeyError(f"unknown study {name!r}; allowed: {', '.join(STUDIES)}")
    return STUDIES[name]


def get_profile(study: Study, name: str, data_dir: str | None = None) -> Profile:
    if name not in study.profiles:
        raise KeyError(f"unknown profile {name!r} for {study.name}; allowed: {', '.join(study.profiles)}")
    profile = study.profiles[name]
    if data_dir is not None:
        base = {**profile.base, "data": {**profile.base.get("data", {}), **ag_news_base(data_dir)}}
        profile = replace(profile, base=base)
    return profile
