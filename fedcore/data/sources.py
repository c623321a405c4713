"""Data sources addressed by URI.

    hf:<name>[?config=C&train=train&test=test&text=text&label=label]
        A dataset from the Hugging Face hub (or the local datasets cache) via datasets.load_dataset.
    csv:<path>[?text=a,b&label=c&header=none&label_offset=1&class_names=x,y]
    tsv:<path>[?...]
        A local delimited file. `header=none` means the file has no header row; columns are then
        addressed by 0-based index. `text` may name several columns (joined with a space).
        `label_offset` is subtracted from integer labels (AG News' 1..4 -> 0..3); string labels
        are mapped to 0..C-1 in sorted order.
    sklearn:digits
        scikit-learn's 8x8 digits (1,797 images, 10 classes), as 64 features in [0, 1].
    synthetic:topics[?classes=4&n=4000&test=800&seed=0&signal=0.3]
        A generated text corpus (fedcore/data/synthetic.py), labelled synthetic.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

SCHEMES = ("hf", "csv", "tsv", "sklearn", "synthetic")


class DataSourceError(RuntimeError):
    """A data source cannot be read; the message says what to do."""


@dataclass
class Split:
    labels: np.ndarray
    texts: list[str] | None = None
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class RawDataset:
    name: str
    kind: str  # "text" or "features"
    train: Split
    test: Split | None
    class_names: list[str]
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def parse_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    if ":" not in uri:
        raise ValueError(
            f"{uri!r} has no scheme; allowed: "
            "hf:<name>, csv:<path>, tsv:<path>, sklearn:digits, synthetic:topics"
        )
    scheme, rest = uri.split(":", 1)
    target, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    return scheme, target, params


_ALLOWED_PARAMS = {
    "hf": {"config", "train", "test", "text", "label", "class_names"},
    "csv": {"text", "label", "header", "label_offset", "class_names"},
    "tsv": {"text", "label", "header", "label_offset", "class_names"},
    "sklearn": set(),
    "synthetic": {"classes", "n", "test", "seed", "signal", "confuse"},
}


_NUMERIC = {"classes": int, "n": int, "test": int, "seed": int, "signal": float, "confuse": float,
            "label_offset": int}


def check_uri(uri: str) -> str:
    """Validate a source URI without loading it (raises ValueError with what is allowed).

    Returns the URI with a local file's path made absolute, so that it still resolves from a
    worker whose working directory differs (Ray changes it).
    """
    scheme, target, params = parse_uri(uri)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown data scheme {scheme!r} in {uri!r}; allowed: {', '.join(SCHEMES)}")
    unknown = set(params) - _ALLOWED_PARAMS[scheme]
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)} for {scheme}: sources; allowed: "
            f"{sorted(_ALLOWED_PARAMS[scheme]) or 'none'}"
        )
    for key, typ in _NUMERIC.items():
        if key in params:
            try:
                typ(params[key])
            except ValueError:
                raise ValueError(f"parameter {key}={params[key]!r} in {uri!r} must be {typ.__name__}") from None
    if scheme in ("csv", "tsv"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ValueError(f"data file {target!r} does not exist (from {uri!r})")
        query = uri.split("?", 1)[1] if "?" in uri else ""
        return f"{scheme}:{path.resolve()}" + (f"?{query}" if query else "")
    elif scheme == "sklearn" and target != "digits":
        raise ValueError(f"unknown sklearn dataset {target!r}; allowed: digits")
    elif scheme == "synthetic" and target != "topics":
        raise ValueError(f"unknown synthetic dataset {target!r}; allowed: topics")
    elif scheme == "hf" and not target:
        raise ValueError("hf: needs a dataset name, e.g. hf:ag_news")
    return uri


def load_source(uri: str) -> RawDataset:
    check_uri(uri)
    scheme, target, params = parse_uri(uri)
    if scheme == "synthetic":
        return _load_synthetic(params)
    if scheme == "sklearn":
        return _load_digits()
    if scheme in ("csv", "tsv"):
        split, names = _load_delimited(target, params, "," if scheme == "csv" else "\t")
        return RawDataset(Path(target).name, "text", split, None, names)
    return _load_hf(target, params)


def load_test_split(uri: str, class_names: list[str]) -> Split:
    """A separate test file, its labels expressed in the training source's classes."""
    ds = load_source(uri)
    split = ds.train
    integer_labels = ds.class_names == [str(i) for i in range(len(ds.class_names))]
    if not integer_labels and ds.class_names != class_names[: len(ds.class_names)]:
        # labels given by name: map them through the training source's names
        lookup = {name: i for i, name in enumerate(class_names)}
        unknown = sorted(set(ds.class_names) - set(lookup))
        if unknown:
            raise DataSourceError(
                f"test source {uri!r} has classes {unknown[:5]} that the training source does not "
                f"have ({', '.join(class_names)})"
            )
        remap = np.array([lookup[n] for n in ds.class_names], dtype=np.int64)
        split = Split(remap[split.labels], texts=split.texts, features=split.features)
    if len(split) and split.labels.max() >= len(class_names):
        raise DataSourceError(
            f"test source {uri!r} has labels outside the training source's {len(class_names)} classes"
        )
    return split


def _load_synthetic(p: dict[str, str]) -> RawDataset:
    from fedcore.data.synthetic import generate_topics

    tr_x, tr_y, te_x, te_y, names = generate_topics(
        n_train=int(p.get("n", 4000)),
        n_test=int(p.get("test", 800)),
        classes=int(p.get("classes", 4)),
        seed=int(p.get("seed", 0)),
        signal=float(p.get("signal", 0.3)),
        confuse=float(p.get("confuse", 0.08)),
    )
    return RawDataset(
        "synthetic:topics (SYNTHETIC)",
        "text",
        Split(tr_y, texts=tr_x),
        Split(te_y, texts=te_x),
        names,
        synthetic=True,
        notes=["synthetic:topics is a generated corpus; results say nothing about real text"],
    )


def _load_digits() -> RawDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return RawDataset(
        "sklearn:digits", "features", Split(d.target.astype(np.int64), features=x), None,
        [str(i) for i in range(10)],
    )


def _labels_to_ids(raw: list, offset: int, class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    try:
        ints = np.asarray([int(v) for v in raw], dtype=np.int64) - offset
    except (TypeError, ValueError):
        uniq = sorted({str(v) for v in raw})
        lookup = {v: i for i, v in enumerate(uniq)}
        return np.asarray([lookup[str(v)] for v in raw], dtype=np.int64), class_names or uniq
    if len(ints) and ints.min() < 0:
        raise DataSourceError(
            f"labels go below 0 after subtracting label_offset={offset}; check label_offset"
        )
    n = int(ints.max()) + 1 if len(ints) else 0
    names = class_names or [str(i) for i in range(n)]
    if len(names) < n:
        raise DataSourceError(f"class_names lists {len(names)} names but labels go up to {n - 1}")
    return ints, names


def _load_delimited(path: str, p: dict[str, str], delimiter: str) -> tuple[Split, list[str]]:
    import datasets

    path = str(Path(path).expanduser().resolve())
    has_header = p.get("header", "true").lower() not in ("none", "false", "0", "no")
    kwargs: dict = {"delimiter": delimiter}
    if not has_header:
        with open(path, newline="", encoding="utf-8") as f:
            first = next(csv.reader(f, delimiter=delimiter), None)
        if not first:
            raise DataSourceError(f"{path} is empty")
        ncols = len(first)
        kwargs["column_names"] = [str(i) for i in range(ncols)]
        kwargs["header"] = None
    try:
        ds = datasets.load_dataset("csv", data_files=path, split="train", **kwargs)
    except Exception as e:  # datasets wraps pandas errors in several types
        raise DataSourceError(f"could not read {path}: {e}") from None
    text_cols = p.get("text", "text").split(",")
    label_col = p.get("label", "label")
    missing = [c for c in text_cols + [label_col] if c not in ds.column_names]
    if missing:
        raise DataSourceError(
            f"{path}: column(s) {missing} not found; columns are {ds.column_names} "
            f"(use header=none and 0-based indices for a file without a header row)"
        )
    cols = [ds[c] for c in text_cols]
    texts = [" ".join("" if v is None else str(v) for v in row) for row in zip(*cols)]
    names = p["class_names"].split(",") if p.get("class_names") else None
    labels, names = _labels_to_ids(ds[label_col], int(p.get("label_offset", 0)), names)
    return Split(labels, texts=texts), names


HF_OFFLINE_HELP = (
    "could not load {name!r} from the Hugging Face hub: it cannot be reached from here and the "
    "dataset is not in the local datasets cache ({err}). Point data.source at a local copy "
    "instead, e.g. csv:/path/to/train.csv?text=text&label=label (and data.test_source for the "
    "test file), or copy the dataset into the datasets cache (HF_DATASETS_CACHE) on a machine "
    "with network access. Without network, HF_HUB_OFFLINE=1 makes this check fail at once "
    "instead of after the hub client's retries."
)


def _load_hf(name: str, p: dict[str, str]) -> RawDataset:
    import datasets

    try:
        dsd = datasets.load_dataset(name, p.get("config") or None)
    except Exception as e:  # connection errors surface as several exception types
        err = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        raise DataSourceError(HF_OFFLINE_HELP.format(name=name, err=err)) from None
    train_name, test_name = p.get("train", "train"), p.get("test", "test")
    text_cols = p.get("text", "text").split(",")
    label_col = p.get("label", "label")

    def to_split(split, split_name: str) -> Split:
        missing = [c for c in text_cols + [label_col] if c not in split.column_names]
        if missing:
            raise DataSourceError(
                f"{name}: column(s) {missing} not in split {split_name!r}; columns are "
                f"{split.column_names} (choose them with ?text=...&label=...)"
            )
        cols = [split[c] for c in text_cols]
        texts = [" ".join(str(v) for v in row) for row in zip(*cols)]
        labels = np.asarray(split[label_col], dtype=np.int64)
        if len(labels) and labels.min() < 0:
            raise DataSourceError(
                f"{name}: split {split_name!r} has unlabelled rows (label {labels.min()}); use a "
                f"labelled split as the test set, e.g. ?test=validation"
            )
        return Split(labels, texts=texts)

    for wanted in (train_name, test_name):
        if wanted not in dsd and (wanted == train_name or "test" in p):
            raise DataSourceError(f"{name}: no split {wanted!r}; splits are {list(dsd)}")
    feat = dsd[train_name].features[label_col]
    names = list(getattr(feat, "names", None) or [])
    if p.get("class_names"):
        names = p["class_names"].split(",")
    train = to_split(dsd[train_name], train_name)
    if not names:
        names = [str(i) for i in range(int(train.labels.max()) + 1)]
    test = to_split(dsd[test_name], test_name) if test_name in dsd else None
    return RawDataset(name, "text", train, test, names)
