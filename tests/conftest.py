import os
from pathlib import Path

import pytest

# tests never reach a hub: transformers, huggingface_hub and datasets answer from local files
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
AG_NEWS = SHARED_DATA / "ag_news"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one tensor cache per test session, never the user's ~/.cache
    monkeypatch.setenv("FEDCORE_CACHE", str(tmp_path_factory.getbasetemp() / "fedcore-cache"))


def ag_news_uris():
    train = f"csv:{AG_NEWS}/train.csv?text=text&label=label&class_names=World,Sports,Business,Sci/Tech"
    test = f"csv:{AG_NEWS}/test.csv?header=none&text=2&label=0&label_offset=1"
    return train, test


needs_ag_news = pytest.mark.skipif(
    not (AG_NEWS / "train.csv").is_file(),
    reason=f"real AG News not found at {AG_NEWS} (../shared/data is absent on a fresh clone)",
)


def study_plan(study_name: str, profile_name: str, controls: bool = False, **kw):
    """(cell name, cell, space, validated config at the space's lower corner) for every design cell
    of a built-in study's profile, as the launch plans them (no data loaded)."""
    import argparse

    from sweeps.launch import plan
    from sweeps.studies import get_profile, get_study

    study = get_study(study_name, profile_name, controls)
    profile = get_profile(study, profile_name, **kw)
    args = argparse.Namespace(controls=controls, cells=None, device="cpu", set=[], space=[])
    return [(e["name"], e["cell"], e["space"], e["cfg"]) for e in plan(args, study, profile)]


def study_configs(study_name: str, profile_name: str, controls: bool = False, **kw):
    """(cell, space, validated config at the space's lower corner) for every design cell of a profile."""
    for _, cell, space, cfg in study_plan(study_name, profile_name, controls, **kw):
        yield cell, space, cfg


def launch_and_report(tmp_path, study: str, cells: str, *extra: str) -> tuple[str, str]:
    """A real launch of `study` (cells matching `cells`, one tuning and one seed trial each) into an
    MLflow store under tmp_path, then its report; (launch stdout, report stdout)."""
    import subprocess
    import sys

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-m", "sweeps.launch", study, "--cells", cells, "--num-samples", "1",
                          "--seeds", "1", "--storage", str(tmp_path), "--tracking-uri", db, *extra],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = subprocess.run([sys.executable, "-m", "sweeps.report", study, "--tracking-uri", db, "--out",
                          str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    return out.stdout, rep.stdout


def image_folders(root: Path, classes, per_class: int = 1, domains=None, splits=("train", "test")) -> Path:
    """<split>/[<domain>/]<class>/<i>.png with tiny distinct images: enough rows for a launch's data
    check to build its partitions (the dry runs load the data too)."""
    import numpy as np
    from PIL import Image

    for split in splits:
        for d in domains or (None,):
            for c, cls in enumerate(classes):
                folder = root / split / (d or "") / cls
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    Image.fromarray(np.full((4, 4, 3), (c * 7 + i) % 256, np.uint8)).save(folder / f"{i}.png")
    return root
