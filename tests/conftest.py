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
