"""Studies and their profiles, as the launch plans them.

A study = design cells to cover, a nuisance space tuned inside each cell with the same budget,
objectives, an ASHA setting, and profiles (smoke / local / paper) that fix the data, the
foundation model and the budget. Every study is declared in a study file (sweeps/study_file.py;
the built-in ones in studies/*.yaml) and read into a Study with its one resolved Profile. What is
code here is what a file cannot say: the data layouts `--data-dir` knows, and the user's own data
(`--data`). Flags of `python -m sweeps.launch` override profile values.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from fedcore.metrics import BALANCEDNESS, WORST_CLIENT_ACC

AG_NEWS_CLASSES = "World,Sports,Business,Sci/Tech"


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    base: dict[str, Any]  # nested RunConfig dict shared by every trial
    foundation_model: str  # whose zero-shot head scores every trial, where the study has that row
    rounds: int  # unless a cell sets its own
    num_samples: int  # Optuna trials per design cell
    seeds: int  # re-runs of each cell's best configuration
    grace_rounds: int = 2  # ASHA grace period, in rounds
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)  # datasets, max_concurrent, report
    # --data-dir: the files it must hold; without `datasets` it holds AG News (ag_news_base)
    data_files: tuple[str, ...] = ("train.csv", "test.csv")
    # profiles whose cells cover several datasets: --data-dir (or None: the hub) -> {dataset: dotted
    # overrides}, resolved into options["datasets"] by get_profile
    datasets: Callable[[str | None], dict[str, dict[str, Any]]] | None = None


@dataclass(frozen=True)
class Study:
    name: str
    summary: str
    profiles: dict[str, Profile]
    cells: Callable[[Profile], list[dict[str, Any]]]  # profile -> design cells (what each records)
    cell_name: Callable[[dict[str, Any]], str]
    cell_overrides: Callable[[dict[str, Any], Profile], dict[str, Any]]
    space: Callable[[dict[str, Any]], dict[str, Any]]  # cell -> Optuna distributions by dotted key
    # the first objective picks each cell's best configuration (the second breaks ties)
    objectives: tuple[str, ...] = (WORST_CLIENT_ACC, BALANCEDNESS)
    asha_metric: str = WORST_CLIENT_ACC
    notes: tuple[str, ...] = field(default_factory=tuple)
    # every trial also scores the foundation model's zero-shot head (teacher.name = the profile's
    # foundation model, where it is a text encoder or CLIP): the zero-shot row of the report
    zero_shot_row: bool = True
    # the dotted fields that make a cell what it is (--set may not fix them); cell_overrides' keys if None
    design_keys: Callable[[dict[str, Any], Profile], set[str]] | None = None
    # a cell's factor labels as the study file names its levels (the declared contrasts match on them)
    labels: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    source: str | None = None  # the study file it was read from (sweeps/study_file.py), if any
    sha: str | None = None  # that file's content hash, so --resume can tell it changed


def ag_news_base(data_dir: str | None) -> dict[str, Any]:
    """AG News from a local copy (train.csv/test.csv as in ../shared/data/ag_news) or the hub."""
    if data_dir is None:
        return {"source": "hf:ag_news"}
    d = Path(data_dir).expanduser().resolve()
    return {"source": f"csv:{d / 'train.csv'}?text=text&label=label&class_names={AG_NEWS_CLASSES}",
            "test_source": f"csv:{d / 'test.csv'}?header=none&text=2&label=0&label_offset=1"}


def image_dir_base(data_dir: str) -> dict[str, Any]:
    """An image dataset with domains, as train/<domain>/<class>/* and test/<domain>/<class>/*."""
    d = Path(data_dir).expanduser().resolve()
    return {"source": f"images:{d / 'train'}?layout=domain/class&size=224",
            "test_source": f"images:{d / 'test'}?layout=domain/class&size=224"}


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


TEXT_DATA_FILES = {"ag_news": ("ag_news/train.csv", "ag_news/test.csv"),
                   "dbpedia14": ("dbpedia14/train.csv", "dbpedia14/test.csv", "dbpedia14/meta.txt")}


TEXT_FILES = {f for files in TEXT_DATA_FILES.values() for f in files}


def text_data_files(names: tuple[str, ...]) -> tuple[str, ...]:
    """What --data-dir must hold for these corpora (only theirs: an AG News-only profile needs no DBpedia)."""
    return tuple(f for n in names for f in TEXT_DATA_FILES.get(n, ()))


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


def _synthetic_or_ag_news(data_dir: str | None, synthetic: dict, ag_news_extra: dict | None = None) -> dict:
    """A smoke profile's one dataset: the synthetic corpus, or AG News from --data-dir."""
    if data_dir is None:
        return synthetic
    return {"ag_news": {**{f"data.{k}": v for k, v in ag_news_base(data_dir).items()}, **(ag_news_extra or {})}}


STUDY_DIR = Path(__file__).resolve().parents[1] / "studies"  # the built-in studies, one file each


def builtin_studies() -> dict[str, Path]:
    """{name: study file} of the built-in studies (studies/*.yaml)."""
    return {p.stem: p for p in sorted(STUDY_DIR.glob("*.yaml"))}


def study_summaries() -> dict[str, str]:
    """{name: its one-line summary}, read without resolving any profile (--list)."""
    from sweeps.study_file import read

    return {name: str(read(path)[0].get("summary", "")) for name, path in builtin_studies().items()}


def get_study(name: str, profile: str | None = None, controls: bool = False) -> Study:
    """A built-in study, resolved for one profile (None: its first, smoke) and --controls."""
    from sweeps.study_file import load_study

    files = builtin_studies()
    if name not in files:
        raise KeyError(f"unknown study {name!r}; allowed: {', '.join(files)}, or a study file (.yaml)")
    return load_study(files[name], profile, controls)


def layout_fields(spec, datasets: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """A study file's data_dir (what --data-dir holds) as Profile fields: the files it must hold and,
    for a study with a factor over datasets, the datasets it gives (`datasets` without one)."""
    kind = spec.layout
    if kind == "ag_news":
        if datasets is None:
            return {}  # the profile's data section, replaced by ag_news_base(--data-dir)
        return {"datasets": lambda d: _synthetic_or_ag_news(d, datasets, spec.extra)}
    if datasets is None:
        raise ValueError(f"data_dir layout {kind!r} gives datasets: the study needs a factor with from: datasets")
    if kind == "text_corpora":
        return {"datasets": text_datasets(tuple(spec.names), **spec.extra), "data_files": text_data_files(tuple(spec.names))}
    if kind == "image_classes":
        return {"datasets": image_datasets(spec.name or "images", **spec.extra), "data_files": tuple(spec.files or ())}
    if kind == "lora_fair_domains":
        return {"datasets": lora_fair_datasets, "data_files": ("train", "test")}
    raise ValueError(f"data_dir layout {kind!r}; allowed: ag_news, text_corpora, image_classes, lora_fair_domains")


def slug(name: str) -> str:
    """A dataset's name as it can stand in a cell name (letters, digits, '.', '-', '_')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "data"


def with_data(profile: Profile, data: str, test_data: str | None) -> Profile:
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


def check_data_dir(data_dir: str, files: tuple[str, ...], what: str) -> None:
    """--data-dir holds `files`; ValueError naming what it lacks (and its parent, where the user gave
    the corpus folder itself: ../shared/data/ag_news for a profile that reads ../shared/data)."""
    d = Path(data_dir)
    missing = [f for f in files if not (d / f).exists()]
    if not missing:
        return
    hint = ""
    inside = {f.split("/", 1)[0] for f in missing if "/" in f}
    if d.name in inside and all((d.parent / f).exists() for f in files):
        hint = f"; it is one corpus folder: give the folder that holds it, --data-dir {d.parent}"
    raise ValueError(f"--data-dir {data_dir!r} lacks {', '.join(missing)} ({what}){hint}")


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
        return with_data(profile, data, test_data)
    if profile.datasets is not None:
        if data_dir is not None:
            check_data_dir(data_dir, profile.data_files, f"profile {name} of {study.name}")
        elif profile.base.get("device") == "cuda" and not (profile.data_files and set(profile.data_files) <= TEXT_FILES):
            raise ValueError(f"profile {name} of {study.name} reads its images from --data-dir "
                             f"({', '.join(profile.data_files) or 'train_jpg.tar, test_jpg.tar'} or train/, test/)")
        return replace(profile, options={**profile.options, "datasets": profile.datasets(data_dir)})
    if data_dir is not None:
        check_data_dir(data_dir, profile.data_files, f"profile {name} of {study.name}")
        base = {**profile.base, "data": {**profile.base.get("data", {}), **ag_news_base(data_dir)}}
        profile = replace(profile, base=base)
    return profile
