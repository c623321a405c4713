"""Named studies and their profiles.

A study = design cells to cover, a nuisance space tuned inside each cell with the same budget,
objectives, an ASHA setting, and profiles (smoke / local / paper) that fix the data, the
foundation model and the budget. Flags of `python -m sweeps.launch` override profile values.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from search_spaces import fairness_paradox as fp
from search_spaces import fed_lpfm as lp
from search_spaces import fedpurel as pr
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
    # profiles whose cells cover several datasets: --data-dir (or None: the hub) -> {dataset: dotted
    # overrides}, resolved into options["datasets"] by get_profile
    datasets: Callable[[str | None], dict[str, dict[str, Any]]] | None = None


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
    # every trial also scores the foundation model's zero-shot head (teacher.name = the profile's
    # foundation model, where it is a text encoder or CLIP): the zero-shot row of the report
    zero_shot_row: bool = True


def ag_news_base(data_dir: str | None) -> dict[str, Any]:
    """AG News from a local copy (train.csv/test.csv as in ../shared/data/ag_news) or the hub."""
    if data_dir is None:
        return {"source": "hf:ag_news"}
    d = Path(data_dir).expanduser().resolve()
    return {"source": f"csv:{d / 'train.csv'}?text=text&label=label&class_names={AG_NEWS_CLASSES}",
            "test_source": f"csv:{d / 'test.csv'}?header=none&text=2&label=0&label_offset=1"}


FAIRNESS_PROFILES = {
    "smoke": Profile(
        "smoke", "offline: synthetic topics corpus, MiniLM, 5 clients, 3 rounds; about 2.5 minutes on 2 CPU cores",
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
        "smoke", "offline: synthetic topics corpus, MiniLM, 5 clients with ranks 16/8/4/2/1, 3 rounds; about 3 "
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

# LoRA-FAIR's datasets, told apart by their domain folders; global rounds per dataset (paper text,
# "Training Details")
LORA_FAIR_DOMAINS = {"domainnet": {"clipart", "infograph", "painting", "quickdraw", "real", "sketch"},
                     "nicopp": {"autumn", "dim", "grass", "outdoor", "rock", "water"}}
LORA_FAIR_ROUNDS = {"domainnet": 50, "nicopp": 30}


def lora_fair_dataset(data_dir: Path) -> str:
    """Which of LoRA-FAIR's datasets --data-dir holds: the one whose domains its train/ folders are,
    else the one its name mentions ('nico', 'domainnet'), else DomainNet, said on stderr."""
    train = data_dir / "train"
    found = {p.name.lower() for p in train.iterdir() if p.is_dir()} if train.is_dir() else set()
    for name, domains in LORA_FAIR_DOMAINS.items():
        if found and found <= domains:
            return name
    folder = data_dir.name.lower()
    for key, name in (("nico", "nicopp"), ("domainnet", "domainnet")):
        if key in folder:
            return name
    print(f"note: --data-dir {data_dir}: its domains ({', '.join(sorted(found)) or 'none'}) are neither DomainNet's "
          f"nor NICO++'s and its name names neither; running DomainNet's protocol ({LORA_FAIR_ROUNDS['domainnet']} "
          f"rounds). A folder named like 'nico...' gets NICO++'s {LORA_FAIR_ROUNDS['nicopp']}.", file=sys.stderr)
    return "domainnet"


def lora_fair_datasets(data_dir: str | None) -> dict[str, dict[str, Any]]:
    """The paper profile's one dataset, from --data-dir: its data sources and its rounds, as dotted overrides."""
    if data_dir is None:
        return {}  # get_profile refuses the paper profile without --data-dir before this matters
    d = Path(data_dir).expanduser().resolve()
    name = lora_fair_dataset(d)
    return {name: {**{f"data.{k}": v for k, v in image_dir_base(str(d)).items()}, "rounds": LORA_FAIR_ROUNDS[name]}}


LORA_FAIR_PROFILES = {
    "smoke": Profile(
        "smoke", "offline: synthetic topics corpus, MiniLM + LoRA r 8, 5 clients, alpha 0.5, 3 rounds; about 3 "
        "minutes on 2 CPU cores", base=_LORA_SMOKE_BASE,
        foundation_model="minilm-l6", alphas=(0.5,), rounds=lambda a: 3, num_samples=2, seeds=2,
        max_local_epochs=1, grace_rounds=2),
    "local": Profile(
        "local", "AG News (hub, or --data-dir), MiniLM + LoRA r 16, 10 clients, label skew alpha 0.1 and 0.5",
        base={**_LORA_LOCAL_BASE, "model": {"lora": {"r": 16}}},
        foundation_model="minilm-l6", alphas=(0.1, 0.5), rounds=lambda a: 10, num_samples=4, seeds=3,
        max_local_epochs=2, grace_rounds=3),
    "paper": Profile(
        "paper", "LoRA-FAIR as its paper runs it: ViT-B/16 (timm, pretrained), DomainNet or NICO++ from "
        "--data-dir (train|test/<domain>/<class>/), Table 1 feature non-IID (6 clients, one per domain, all "
        "every round, 2 local steps) and Table 2 feature + label non-IID (30 clients, 5 per domain, Dirichlet "
        "0.5, 18 a round, 5 local steps); batch 128, SGD lr 0.01, LoRA r 16, lambda 0.01; 50 rounds on "
        "DomainNet, 30 on NICO++; 3 seeds, GPUs; a stratified 40k/10k-image subset, as each trial holds its "
        "decoded 224px images in memory (about 6 GB)",
        base={"data": {"max_train_samples": 40000, "max_test_samples": 10000},
              "model": {"lora": {"r": 16, "alpha": 16}}, "eval": {"protocol": "class_filtered", "batch_size": 256},
              "device": "cuda"},
        # each cell sets its dataset's rounds (lora_fair_datasets); this is only the fallback
        foundation_model="timm:vit_base_patch16_224.augreg2_in21k_ft_in1k", alphas=(0.5,),
        rounds=lambda a: LORA_FAIR_ROUNDS["domainnet"], num_samples=4, seeds=3, max_local_epochs=1,
        grace_rounds=10, gpus_per_trial=0.5, options={"protocols": ls.PAPER_PROTOCOLS},
        datasets=lora_fair_datasets, data_files=("train", "test")),
}

def _meta_names(path: Path) -> list[str]:
    """Class names from DBpedia-14's meta.txt ("1: Artist" lines, in label order)."""
    rows = [line.split(":", 1) for line in path.read_text().splitlines() if ":" in line and line[0].isdigit()]
    return [name.strip() for _, name in sorted(rows, key=lambda r: int(r[0]))]


def text_datasets(names: tuple[str, ...], **extra: dict[str, Any]) -> Callable[[str | None], dict[str, dict[str, Any]]]:
    """AG News and DBpedia-14 from a local folder holding ag_news/ and dbpedia14/ as in ../shared/data
    (--data-dir), or from the hub; `extra` adds dotted overrides per dataset."""
    def resolve(data_dir: str | None) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        d = Path(data_dir).expanduser().resolve() if data_dir else None
        for name in names:
            if name == "ag_news":
                src = ag_news_base(str(d / "ag_news") if d else None)
            elif d is None:
                src = {"source": "hf:fancyzhx/dbpedia_14?text=content"}
            else:
                classes = ",".join(_meta_names(d / "dbpedia14" / "meta.txt"))
                src = {"source": f"csv:{d / 'dbpedia14' / 'train.csv'}?header=none&text=1&label=0&label_offset=1"
                                 f"&class_names={classes}",
                       "test_source": f"csv:{d / 'dbpedia14' / 'test.csv'}?header=none&text=1&label=0&label_offset=1"}
            out[name] = {**{f"data.{k}": v for k, v in src.items()}, **extra.get(name, {})}
        return out
    return resolve


TEXT_DATA_FILES = ("ag_news/train.csv", "ag_news/test.csv", "dbpedia14/train.csv", "dbpedia14/test.csv",
                   "dbpedia14/meta.txt")


def image_datasets(name: str, **extra: Any) -> Callable[[str | None], dict[str, dict[str, Any]]]:
    """An image dataset from --data-dir: train/ and test/ class folders, or train_jpg.tar and
    test_jpg.tar as in ../shared/data/cifar10."""
    def resolve(data_dir: str | None) -> dict[str, dict[str, Any]]:
        if data_dir is None:
            return {name: {}}  # get_profile refuses a profile that needs --data-dir before this matters
        d = Path(data_dir).expanduser().resolve()
        train, test = (d / "train", d / "test") if (d / "train").exists() else (d / "train_jpg.tar", d / "test_jpg.tar")
        return {name: {"data.source": f"images:{train}", "data.test_source": f"images:{test}", **extra}}
    return resolve


_SYNTHETIC = {"synthetic": {"data.source": "synthetic:topics?n=1500&test=200"}}
# long-tailed synthetic pool (imbalance 10 over 4 classes: about 325, 150, 70, 32): Many/Medium/Few thresholds
# that give each group a class
_SYNTHETIC_LT = {"synthetic": {"data.source": "synthetic:topics?n=1500&test=200", "eval.many_min": 200,
                               "eval.few_max": 50}}


def _synthetic_or_ag_news(data_dir: str | None, synthetic: dict, ag_news_extra: dict | None = None) -> dict:
    """A smoke profile's one dataset: the synthetic corpus, or AG News from --data-dir."""
    if data_dir is None:
        return synthetic
    return {"ag_news": {**{f"data.{k}": v for k, v in ag_news_base(data_dir).items()}, **(ag_news_extra or {})}}


_SMOKE = {"data": {"max_len": 16}, "partition": {"num_clients": 5}, "eval": {"batch_size": 128},
          "batch_size": 16, "torch_threads": 1}

FED_LPFM_PROFILES = {
    "smoke": Profile(
        "smoke", "offline: synthetic topics corpus, TextCNN students, MiniLM zero-shot teacher, 5 clients, alpha 0.1 "
        "and 1, and a 2-classes-per-client split for FedAvg, FedProx (the paper's headline baseline) and Fed-LPFM "
        "only (11 cells), 3 rounds; 101 s on 2 CPU cores (measured)",
        base={**_SMOKE, "eval": {"protocol": "class_filtered", "batch_size": 128}, "max_local_steps": 30},
        foundation_model="minilm-l6", alphas=(0.1, 1.0), rounds=lambda a: 3, num_samples=2, seeds=2,
        max_local_epochs=1, grace_rounds=2,
        # the class split adds three cells here (the comparison the paper's headline is about); --controls
        # adds the teacher ablations, the per-client one drawing from MiniLM and the randomly
        # initialised tiny-bert, the only other text encoder offline (a plumbing check, not a second prior)
        options={"students": ("textcnn",), "teachers": ("minilm-l6",), "classes_per_client": lp.CLASSES_PER_CLIENT,
                 "class_split_methods": ("fedavg", "fedprox", "fed_lpfm"), "per_client_teachers": ("minilm-l6", "tiny-bert"),
                 "finetune_epochs": 2},
        datasets=lambda d: _synthetic_or_ag_news(d, _SYNTHETIC)),
    "local": Profile(
        "local", "AG News-LT and DBpedia-14-LT (imbalance 10; --data-dir ../shared/data, or the hub), TextCNN "
        "students, MiniLM teacher, 10 clients, alpha 0.01 to 1 and 2 classes per client",
        base={"data": {"max_len": 64, "max_train_samples": 8000, "max_test_samples": 1000, "long_tail_if": 10},
              "partition": {"num_clients": 10}, "eval": {"protocol": "class_filtered", "batch_size": 256},
              "batch_size": 32, "max_local_steps": 40},
        foundation_model="minilm-l6", alphas=(0.01, 0.1, 1.0), rounds=lambda a: 10, num_samples=3, seeds=3,
        max_local_epochs=2, grace_rounds=3,
        # 2 classes for each of 10 clients covers DBpedia's 14 (a class split needs clients x k >= classes)
        options={"students": ("textcnn",), "teachers": ("minilm-l6",), "classes_per_client": lp.CLASSES_PER_CLIENT,
                 "per_client_teachers": ("minilm-l6", "tiny-bert")},
        datasets=text_datasets(("ag_news", "dbpedia14"), ag_news={"eval.many_min": 1000, "eval.few_max": 200}),
        data_files=TEXT_DATA_FILES),
    "paper": Profile(
        "paper", "Fed-LPFM's setting: CIFAR-10 from --data-dir, ResNet-18 / MobileNetV2 / EfficientNet-B0 students "
        "from scratch, CLIP zero-shot teachers (open_clip, pretrained), 10 clients, alpha 0.01 to 1 and the class "
        "split (2 classes per client), GPUs",
        base={"partition": {"num_clients": 10}, "eval": {"protocol": "class_filtered", "batch_size": 512},
              "batch_size": 64, "device": "cuda"},
        foundation_model="clip:ViT-B-16/openai", alphas=lp.ALPHAS, rounds=lambda a: 50, num_samples=6, seeds=3,
        max_local_epochs=3, grace_rounds=10, gpus_per_trial=0.25,
        options={"students": ("timm:resnet18", "timm:mobilenetv2_100", "timm:efficientnet_b0"),
                 "teachers": ("clip:ViT-B-16/openai", "clip:ViT-B-32/openai", "clip:ViT-L-14/openai", "clip:RN50/openai"),
                 "classes_per_client": lp.CLASSES_PER_CLIENT},  # --controls: per-client teachers from these four
        datasets=image_datasets("cifar10"), data_files=()),
}

_PUREL_SMOKE = {**_SMOKE, "data": {"max_len": 16}, "clients_per_round": 2, "max_local_steps": 6,
                "model": {"lora": {"r": 8, "alpha": 16, "dropout": 0.1}}}
FEDPUREL_PROFILES = {
    "smoke": Profile(
        "smoke", "offline: long-tailed synthetic topics corpus (imbalance 10), MiniLM with its zero-shot head + "
        "LoRA, pooled partition of 5 clients (2 a round), beta 1, 3 rounds; about 2 minutes on 2 CPU cores",
        base=_PUREL_SMOKE, foundation_model="minilm-l6", alphas=(1.0,), rounds=lambda a: 3, num_samples=2, seeds=2,
        max_local_epochs=1, grace_rounds=2, options={"imbalance_factors": (10,)},
        datasets=lambda d: _synthetic_or_ag_news(d, _SYNTHETIC_LT, {"eval.many_min": 1000, "eval.few_max": 200})),
    "local": Profile(
        "local", "AG News-LT and DBpedia-14-LT (--data-dir ../shared/data, or the hub), MiniLM zero-shot head + "
        "LoRA r 8, 10 clients (4 a round), imbalance 10 and 100, beta 0.1 and 1; a night on a laptop CPU",
        base={"data": {"max_len": 64, "max_train_samples": 8000, "max_test_samples": 1000},
              "partition": {"num_clients": 10}, "clients_per_round": 4, "eval": {"batch_size": 256},
              "batch_size": 16, "max_local_steps": 20},
        foundation_model="minilm-l6", alphas=(0.1, 1.0), rounds=lambda a: 8, num_samples=2, seeds=2,
        max_local_epochs=1, grace_rounds=3, options={"imbalance_factors": (10, 100)},
        datasets=text_datasets(("ag_news", "dbpedia14"), ag_news={"eval.many_min": 1000, "eval.few_max": 200}),
        data_files=TEXT_DATA_FILES),
    "paper": Profile(
        "paper", "FedPuReL's main setting: CLIP ViT-B/16 (open_clip, OpenAI weights) + LoRA r 8 on the vision "
        "encoder, CIFAR-100-LT from --data-dir (train/ and test/ class folders), 20 clients (40% a round), "
        "100 rounds, imbalance 10/50/100, beta 0.1 to 5, GPUs",
        base={"partition": {"num_clients": 20, "coarse": pr.CIFAR100_COARSE}, "clients_per_round": 8,
              "eval": {"batch_size": 512}, "batch_size": 32, "device": "cuda",
              "model": {"lora": {"r": 8, "alpha": 16, "dropout": 0.25}}},
        foundation_model="clip:ViT-B-16/openai", alphas=pr.BETAS, rounds=lambda a: 100, num_samples=4, seeds=3,
        max_local_epochs=1, grace_rounds=20, gpus_per_trial=0.25,
        options={"imbalance_factors": pr.IMBALANCE_FACTORS}, datasets=image_datasets("cifar100"),
        data_files=("train", "test")),
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
        "LoRA-FAIR vs FedIT, FFA-LoRA, FLoRA, FlexLoRA at equal budget (lambda and server steps tuned; the paper "
        "profile fixes the paper's protocol per setting); report shaped like its Tables 1 and 2",
        LORA_FAIR_PROFILES, lambda p, controls: ls.lora_fair_cells(p), ls.lora_fair_name,
        ls.lora_fair_overrides, ls.lora_fair_space, objectives=("global_acc", "worst_client_acc"),
        asha_metric="global_acc"),
    "fed_lpfm": Study(
        "fed_lpfm",
        "Fed-LPFM: lightweight students distilling a frozen zero-shot foundation model vs FedAvg, FedProx and FML, "
        "by partition (Dirichlet alpha, class split) and teacher (--controls adds a fine-tuned and a per-client teacher)",
        FED_LPFM_PROFILES, lp.cells, lp.cell_name, lp.cell_overrides, lp.space,
        objectives=("global_acc", "balancedness"), asha_metric="global_acc", zero_shot_row=False),  # its cells name their teacher
    "fedpurel": Study(
        "fedpurel",
        "FedPuReL vs FedAvg fine-tuning of a foundation model with its zero-shot head, on long-tailed pooled "
        "partitions by imbalance factor and heterogeneity (--controls adds the plain-KL ablation)",
        FEDPUREL_PROFILES, pr.cells, pr.cell_name, pr.cell_overrides, pr.space,
        objectives=("mean_client_acc", "global_acc", "balancedness"), asha_metric="mean_client_acc",
        zero_shot_row=False),  # the zero-shot-head model is its own teacher
}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise KeyError(f"unknown study {name!r}; allowed: {', '.join(STUDIES)}")
    return STUDIES[name]


def slug(name: str) -> str:
    """A dataset's name as it can stand in a cell name (letters, digits, '.', '-', '_')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "data"


def with_data(profile: Profile, study: Study, data: str, test_data: str | None) -> Profile:
    """The profile on the user's data (--data, --test-data): every cell reads it; a profile whose
    cells cover several datasets covers this one only, named after it."""
    from fedcore.data.sources import check_uri, source_name

    checked = {}
    for flag, uri in (("--data", data), ("--test-data", test_data)):
        try:
            checked[flag] = check_uri(uri) if uri else None
        except ValueError as e:
            raise ValueError(f"{flag}: {e}") from None
    data, test_data = checked["--data"], checked["--test-data"]
    section = {"source": data, "test_source": test_data}
    if profile.datasets is not None:
        dotted = {f"data.{k}": v for k, v in section.items()}
        return replace(profile, options={**profile.options, "datasets": {slug(source_name(data)): dotted}})
    return replace(profile, base={**profile.base, "data": {**profile.base.get("data", {}), **section}})


def get_profile(study: Study, name: str, data_dir: str | None = None, data: str | None = None,
                test_data: str | None = None) -> Profile:
    if name not in study.profiles:
        raise KeyError(f"unknown profile {name!r} for {study.name}; allowed: {', '.join(study.profiles)}")
    profile = study.profiles[name]
    if test_data and not data:
        raise ValueError("--test-data needs --data (the training data it is the test set of)")
    if data:
        if data_dir is not None:
            raise ValueError("give the data either as --data URI (and --test-data) or as --data-dir, not both")
        return with_data(profile, study, data, test_data)
    if profile.datasets is not None:
        if data_dir is not None:
            missing = [f for f in profile.data_files if not (Path(data_dir) / f).exists()]
            if missing:
                raise ValueError(f"--data-dir {data_dir!r} lacks {', '.join(missing)} (profile {name} of {study.name})")
        elif profile.base.get("device") == "cuda" and not profile.data_files == TEXT_DATA_FILES:
            raise ValueError(f"profile {name} of {study.name} reads its images from --data-dir "
                             f"({', '.join(profile.data_files) or 'train_jpg.tar, test_jpg.tar'} or train/, test/)")
        return replace(profile, options={**profile.options, "datasets": profile.datasets(data_dir)})
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
