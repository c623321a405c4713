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
from search_spaces import lora as ls

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
    options: dict[str, Any] = field(default_factory=dict)  # study-specific design levels
    # --data-dir: the files it must hold, and the data section it becomes
    data_files: tuple[str, ...] = ("train.csv", "test.csv")
    data_from_dir: Callable[[str], dict[str, Any]] = None  # type: ignore[assignment]  # AG News by default


@dataclass(frozen=True)
class Study:
    name: str
    summary: str
    profiles: dict[str, Profile]
    cells: Callable[[Profile, bool], list[dict[str, Any]]]  # (profile, --controls) -> design cells
    cell_name: Callable[[dict[str, Any]], str]
    cell_overrides: Callable[[dict[str, Any], Profile], dict[str, Any]]
    space: Callable[[dict[str, Any], int], dict[str, Any]]
    # the first objective picks each cell's best configuration (the second breaks ties)
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

def image_dir_base(data_dir: str) -> dict[str, Any]:
    """An image dataset with domains, as train/<domain>/<class>/* and test/<domain>/<class>/*."""
    d = Path(data_dir).expanduser().resolve()
    return {"source": f"images:{d / 'train'}?layout=domain/class&size=224",
            "test_source": f"images:{d / 'test'}?layout=domain/class&size=224"}


# shared by the LoRA studies' offline profiles: MiniLM (the pretrained encoder shipped offline)
_LORA_SMOKE_BASE = {"data": {"source": "synthetic:topics?n=1500&test=200", "max_len": 16},
                    "partition": {"num_clients": 5}, "eval": {"protocol": "class_filtered", "batch_size": 128},
                    "batch_size": 16, "max_local_steps": 6, "torch_threads": 1}
_LORA_LOCAL_BASE = {"data": {"source": "hf:ag_news", "max_len": 64, "max_train_samples": 8000, "max_test_samples": 1000},
                    "partition": {"num_clients": 10}, "eval": {"protocol": "class_filtered", "batch_size": 128},
                    "batch_size": 16, "max_local_steps": 30}

RANK_COLLAPSE_PROFILES = {
    "smoke": Profile(
        "smoke", "offline: synthetic topics corpus, MiniLM, 5 clients with ranks 16/8/4/2/1, 3 rounds; about 4 "
        "minutes on 2 CPU cores",
        base={**_LORA_SMOKE_BASE, "model": {"lora": {"rank_levels": [16, 8, 4, 2, 1]}}},
        foundation_model="minilm-l6", alphas=(0.5,), rounds=lambda a: 3, num_samples=2, seeds=2,
        max_local_epochs=1, grace_rounds=2, options={"rank_profiles": ("uniform",)}),
    "local": Profile(
        "local", "AG News (hub, or --data-dir), MiniLM, 10 clients, ranks 64..4 in three profiles, alpha 0.1 and 1; "
        "several hours on a laptop CPU", base=_LORA_LOCAL_BASE,
        foundation_model="minilm-l6", alphas=(0.1, 1.0), rounds=lambda a: 10, num_samples=3, seeds=3,
        max_local_epochs=2, grace_rounds=3, options={"rank_profiles": ls.RANK_PROFILES}),
    "paper": Profile(
        "paper", "raFLoRA's text setting: RoBERTa-base on 20 Newsgroups (hub), 20 clients, ranks 64..4, GPUs",
        base={"data": {"source": "hf:SetFit/20_newsgroups", "max_len": 256}, "partition": {"num_clients": 20},
              "eval": {"protocol": "class_filtered", "batch_size": 256}, "batch_size": 16, "device": "cuda",
              "clients_per_round": 10},
        foundation_model="FacebookAI/roberta-base", alphas=(0.1, 0.5, 1.0), rounds=lambda a: 50, num_samples=6,
        seeds=3, max_local_epochs=2, grace_rounds=10, gpus_per_trial=0.5,
        options={"rank_profiles": ("homogeneous",) + ls.RANK_PROFILES}),
}

LORA_FAIR_PROFILES = {
    "smoke": Profile(
        "smoke", "offline: synthetic topics corpus, MiniLM + LoRA r 8, 5 clients, alpha 0.5, 3 rounds; about 4 "
        "minutes on 2 CPU cores", base=_LORA_SMOKE_BASE,
        foundation_model="minilm-l6", alphas=(0.5,), rounds=lambda a: 3, num_samples=2, seeds=2,
        max_local_epochs=1, grace_rounds=2),
    "local": Profile(
        "local", "AG News (hub, or --data-dir), MiniLM + LoRA r 16, 10 clients, label skew alpha 0.1 and 0.5",
        base={**_LORA_LOCAL_BASE, "model": {"lora": {"r": 16}}},
        foundation_model="minilm-l6", alphas=(0.1, 0.5), rounds=lambda a: 10, num_samples=4, seeds=3,
        max_local_epochs=2, grace_rounds=3),
    "paper": Profile(
        "paper", "LoRA-FAIR Table 1: ViT-B/16 (timm, pretrained) on DomainNet from --data-dir "
        "(train|test/<domain>/<class>/), 30 clients (60% a round), feature non-IID and feature + label "
        "(alpha 0.5), LoRA r 16, GPUs; a stratified 40k/10k-image subset, as each trial holds its decoded "
        "224px images in memory (about 6 GB)",
        base={"data": {"max_train_samples": 40000, "max_test_samples": 10000}, "partition": {"num_clients": 30}, "clients_per_round": 18, "batch_size": 32,
              "model": {"lora": {"r": 16, "alpha": 16}}, "eval": {"protocol": "class_filtered", "batch_size": 256},
              "device": "cuda"},
        foundation_model="timm:vit_base_patch16_224.augreg2_in21k_ft_in1k", alphas=(0.5,), rounds=lambda a: 75,
        num_samples=6, seeds=3, max_local_epochs=2, grace_rounds=10, gpus_per_trial=0.5,
        options={"partitions": [("domain", 0.5), ("domain_dirichlet", 0.5)]},
        data_files=("train", "test"), data_from_dir=image_dir_base),
}

STUDIES: dict[str, Study] = {
    "fairness_paradox": Study(
        "fairness_paradox",
        "FM Fairness Paradox: TextCNN vs foundation model + LoRA by Dirichlet alpha, FedAvg vs FedAvgW "
        "(--controls adds fm_full and fm_scratch)",
        FAIRNESS_PROFILES, lambda p, controls: fp.cells(controls, p.alphas), fp.cell_name,
        lambda cell, p: fp.cell_overrides(cell, p.foundation_model), fp.nuisance_space),
    "rank_collapse": Study(
        "rank_collapse",
        "raFLoRA's rank collapse: FedIT (zero-padded), HetLoRA, FlexLoRA, FLoRA, raFLoRA by rank profile by alpha; "
        "energy outside the shared rank per round",
        RANK_COLLAPSE_PROFILES, lambda p, controls: ls.rank_collapse_cells(p), ls.rank_collapse_name,
        ls.rank_collapse_overrides, ls.rank_collapse_space, objectives=("worst_client_acc", "mean_client_acc")),
    "lora_fair": Study(
        "lora_fair",
        "LoRA-FAIR vs FedIT, FFA-LoRA, FLoRA, FlexLoRA at equal budget (lambda and server steps tuned); "
        "Table-1-shaped report",
        LORA_FAIR_PROFILES, lambda p, controls: ls.lora_fair_cells(p), ls.lora_fair_name,
        ls.lora_fair_overrides, ls.lora_fair_space, objectives=("global_acc", "worst_client_acc"),
        asha_metric="global_acc"),
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
        missing = [f for f in profile.data_files if not (Path(data_dir) / f).exists()]
        if missing:
            raise ValueError(f"--data-dir {data_dir!r} lacks {', '.join(missing)} (profile {name} of {study.name})")
        from_dir = profile.data_from_dir or ag_news_base
        base = {**profile.base, "data": {**profile.base.get("data", {}), **from_dir(data_dir)}}
        profile = replace(profile, base=base)
    elif profile.data_from_dir is not None:
        raise ValueError(f"profile {name} of {study.name} reads its data from --data-dir "
                         f"(a folder with {', '.join(profile.data_files)})")
    return profile
