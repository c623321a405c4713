"""Data sources addressed by URI.

    hf:<name>[?config=C&train=train&test=test&text=text&label=label]
        A dataset from the Hugging Face hub (or the local datasets cache) via datasets.load_dataset.
    csv:<path>[?text=a,b&label=c&header=none&label_offset=1&class_names=x,y]
    tsv:<path>[?...]
        A local delimited file. `header=none` means the file has no header row; columns are then
        addressed by 0-based index. `text` may name several columns (joined with a space).
        `label_offset` is subtracted from integer labels (AG News' 1..4 -> 0..3); string labels
        are mapped to 0..C-1 in sorted order.
    sklearn:digits[?images=1&domains=...]
        scikit-learn's 8x8 digits (1,797 images, 10 classes), as 64 features in [0, 1], or with
        images=1 as 8x8 RGB images for the vision models.
    images:<directory or .tar archive>[?layout=class|domain/class&root=F&size=S&domains=a,b]
        An image folder or archive (fedcore/data/images.py): classes from folder names, domains
        from the folder above them (layout=domain/class) or derived by fixed pixel transforms
        (domains=identity,gray,invert,blur,lowcontrast).
    synthetic:topics[?classes=4&n=4000&test=800&seed=0&signal=0.3]
        A generated text corpus (fedcore/data/synthetic.py), labelled synthetic.

Every scheme also takes `name=` (the dataset's name in reports and MLflow tags); without it the
name is the file's or folder's stem, or its parent folder's where the stem is generic
(ag_news/train.csv is `ag_news`), or the hub dataset's name.
"""
from __future__ import annotations

import csv
import math
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch

SCHEMES = ("hf", "csv", "tsv", "sklearn", "synthetic", "images")


class DataSourceError(RuntimeError):
    """A data source cannot be read; the message says what to do."""


@dataclass
class Split:
    labels: np.ndarray
    texts: list[str] | None = None
    features: np.ndarray | None = None
    images: np.ndarray | None = None  # N x H x W x 3 uint8
    domains: np.ndarray | None = None  # domain index per sample (RawDataset.domain_names)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class RawDataset:
    name: str
    kind: str  # "text", "features" or "image"
    train: Split
    test: Split | None
    class_names: list[str]
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)
    domain_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def parse_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    if ":" not in uri:
        raise ValueError(
            f"{uri!r} has no scheme; allowed: "
            "hf:<name>, csv:<path>, tsv:<path>, images:<dir or .tar>, sklearn:digits, synthetic:topics"
        )
    scheme, rest = uri.split(":", 1)
    target, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    return scheme, target, params


_ALLOWED_PARAMS = {
    "hf": {"config", "train", "test", "text", "label", "class_names"},
    "csv": {"text", "label", "header", "label_offset", "class_names"},
    "tsv": {"text", "label", "header", "label_offset", "class_names"},
    "sklearn": {"images", "domains"},
    "images": {"layout", "root", "size", "domains", "class_names"},
    "synthetic": {"classes", "n", "test", "seed", "signal", "confuse"},
}
for _allowed in _ALLOWED_PARAMS.values():
    _allowed.add("name")  # the dataset's name in reports and tags (source_name otherwise)

# file or folder stems that say nothing about the dataset: its folder names it instead
_GENERIC_STEMS = {"train", "training", "test", "testing", "val", "valid", "validation", "data", "dataset", "all",
                  "full", "train_jpg", "test_jpg"}


def source_name(uri: str) -> str:
    """The dataset's name: the URI's `name=`, else a local file's or folder's stem (its parent
    folder's where the stem is generic: ag_news/train.csv -> ag_news), else the hub name."""
    scheme, target, params = parse_uri(uri)
    if params.get("name"):
        return params["name"]
    if scheme in ("csv", "tsv", "images"):
        path = Path(target).expanduser().resolve()
        stem = path.name.split(".")[0]
        if stem.lower() in _GENERIC_STEMS and path.parent.name:
            return path.parent.name
        return stem
    if scheme == "synthetic":
        return "synthetic:topics (SYNTHETIC)"
    if scheme == "sklearn":
        return "sklearn:digits" + (" (images)" if params.get("images") == "1" else "")
    return target


_NUMERIC = {"classes": int, "n": int, "test": int, "seed": int, "signal": float, "confuse": float,
            "label_offset": int, "size": int, "images": int}
# (low, high, what is allowed) of the numeric parameters that have bounds
_RANGES = {"n": (1, None, "a whole number of training samples, at least 1"),
           "test": (1, None, "a whole number of test samples, at least 1"),
           "signal": (0.0, 1.0, "a probability in [0, 1]"), "confuse": (0.0, 1.0, "a probability in [0, 1]"),
           "size": (1, None, "a side in pixels, at least 1"), "images": (0, 1, "0 or 1")}


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
                value = typ(params[key])
            except ValueError:
                raise ValueError(f"parameter {key}={params[key]!r} in {uri!r} must be {typ.__name__}") from None
            low, high, what = _RANGES.get(key, (None, None, ""))
            if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
                raise ValueError(f"parameter {key}={params[key]!r} in {uri!r}: allowed {what}")
    if scheme in ("csv", "tsv"):
        path = Path(target).expanduser()
        if path.is_dir():
            files = sorted(q.name for q in path.glob(f"*.{scheme}"))[:4]
            raise ValueError(f"data file {target!r} is a folder (from {uri!r}); name its file"
                             + (f", e.g. {scheme}:{path / files[0]} (it holds {', '.join(files)})" if files else ""))
        if not path.is_file():
            raise ValueError(f"data file {target!r} does not exist (from {uri!r})")
        query = uri.split("?", 1)[1] if "?" in uri else ""
        return f"{scheme}:{path.resolve()}" + (f"?{query}" if query else "")
    elif scheme == "images":
        path = Path(target).expanduser()
        if not (path.is_dir() or (path.is_file() and tarfile.is_tarfile(path))):
            raise ValueError(f"image data {target!r} is neither a folder nor a tar archive (from {uri!r})")
        if params.get("layout", "class") not in ("class", "domain/class"):
            raise ValueError(f"layout={params['layout']!r} in {uri!r}; allowed: class, domain/class")
        if "domains" in params and params.get("layout") == "domain/class":
            raise ValueError(f"{uri!r}: domains= derives domains, layout=domain/class reads them; choose one")
        _check_derived(params, uri)
        query = uri.split("?", 1)[1] if "?" in uri else ""
        return f"images:{path.resolve()}" + (f"?{query}" if query else "")
    elif scheme == "sklearn" and target != "digits":
        raise ValueError(f"unknown sklearn dataset {target!r}; allowed: digits")
    elif scheme == "sklearn":
        _check_derived(params, uri)
        if "domains" in params and params.get("images") != "1":
            raise ValueError(f"{uri!r}: domains= needs images=1")
    elif scheme == "synthetic" and target != "topics":
        raise ValueError(f"unknown synthetic dataset {target!r}; allowed: topics")
    elif scheme == "hf" and not target:
        raise ValueError("hf: needs a dataset name, e.g. hf:ag_news")
    return uri


def _check_derived(params: dict[str, str], uri: str) -> None:
    from fedcore.data.images import DERIVED_DOMAINS

    names = [n for n in params.get("domains", "").split(",") if n]
    bad = [n for n in names if n not in DERIVED_DOMAINS]
    if bad or ("domains" in params and len(names) < 2):
        raise ValueError(f"domains={params['domains']!r} in {uri!r}: give two or more of "
                         f"{', '.join(DERIVED_DOMAINS)}")


def load_source(uri: str, partial_labels: bool = False) -> RawDataset:
    """A source by URI. partial_labels: the file may lack some of its `class_names` (a test file)."""
    check_uri(uri)
    scheme, target, params = parse_uri(uri)
    if scheme == "synthetic":
        ds = _load_synthetic(params)
    elif scheme == "sklearn":
        ds = _load_digits(params)
    elif scheme == "images":
        ds = _load_images(target, params)
    elif scheme in ("csv", "tsv"):
        split, names = _load_delimited(target, params, "," if scheme == "csv" else "\t", partial_labels)
        ds = RawDataset("", "text", split, None, names)
    else:
        ds = _load_hf(target, params)
    ds.name = source_name(uri)
    for split, what in ((ds.train, "rows"), (ds.test, "test rows")):
        if split is not None and len(split) == 0:
            raise DataSourceError(f"{uri!r} has no {what}; a data source needs labelled samples")
    return ds


def load_test_split(uri: str, class_names: list[str], domain_names: list[str] | None = None) -> Split:
    """A separate test file, its labels (and domains) expressed in the training source's."""
    ds = load_source(uri, partial_labels=True)
    split = ds.train
    integer_labels = ds.class_names == [str(i) for i in range(len(ds.class_names))]
    if not integer_labels and ds.class_names != class_names[: len(ds.class_names)]:
        # labels given by name: map them through the training source's names
        split = replace(split, labels=_remap(split.labels, ds.class_names, class_names, "classes", uri))
    if len(split) and split.labels.max() >= len(class_names):
        raise DataSourceError(
            f"test source {uri!r} has labels outside the training source's {len(class_names)} classes"
        )
    if domain_names is not None:
        if split.domains is None:
            raise DataSourceError(f"test source {uri!r} has no domains but the training source has "
                                  f"({', '.join(domain_names)}); give both the same layout or domains=")
        split = replace(split, domains=_remap(split.domains, ds.domain_names, domain_names, "domains", uri))
    return split


def _remap(values: np.ndarray, names: list[str], target: list[str], what: str, uri: str) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(target)}
    unknown = sorted(set(names) - set(lookup))
    if unknown:
        raise DataSourceError(f"test source {uri!r} has {what} {unknown[:5]} that the training source does not "
                              f"have ({', '.join(target)})")
    return np.array([lookup[n] for n in names], dtype=np.int64)[values]


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


def _load_digits(p: dict[str, str]) -> RawDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    names = [str(i) for i in range(10)]
    labels = d.target.astype(np.int64)
    if p.get("images") != "1":
        x = (d.data / 16.0).astype(np.float32)
        return RawDataset("sklearn:digits", "features", Split(labels, features=x), None, names)
    gray = np.rint(d.images * (255 / 16)).astype(np.uint8)
    ds = RawDataset("sklearn:digits (images)", "image", Split(labels, images=np.repeat(gray[..., None], 3, -1)),
                    None, names)
    return _with_derived_domains(ds, p)


def _with_derived_domains(ds: RawDataset, p: dict[str, str]) -> RawDataset:
    from fedcore.data.images import derive_domains

    names = [n for n in p.get("domains", "").split(",") if n]
    if not names:
        return ds
    for i, split in enumerate((ds.train, ds.test)):
        if split is not None:
            split.images, split.domains = derive_domains(split.images, names, seed=i)
    ds.domain_names = names
    ds.notes.append(f"domains {', '.join(names)} are derived by fixed pixel transforms (feature shift), "
                    f"not natural domains")
    return ds


def _load_images(target: str, p: dict[str, str]) -> RawDataset:
    from fedcore.data.images import read_image_folder
    from fedcore.data.tokenize import cache_dir, cached, content_hash

    path = Path(target).expanduser().resolve()
    layout = p.get("layout", "class")
    stat = path.stat()
    key = content_hash("images-v1", str(path), stat.st_size, stat.st_mtime_ns, layout, p.get("root"), p.get("size"))

    def build() -> dict:
        images, classes, domains, _ = read_image_folder(path, layout, p.get("root"),
                                                        int(p["size"]) if p.get("size") else None)
        names = sorted(set(classes))
        out = {"images": torch.from_numpy(images),
               "labels": torch.as_tensor([names.index(c) for c in classes]),
               "class_names": torch.as_tensor(bytearray("\n".join(names).encode()))}
        if domains is not None:
            dnames = sorted(set(domains))
            out["domains"] = torch.as_tensor([dnames.index(d) for d in domains])
            out["domain_names"] = torch.as_tensor(bytearray("\n".join(dnames).encode()))
        return out

    t = cached(key, cache_dir(None), build)
    names = bytes(t["class_names"].tolist()).decode().split("\n")
    if p.get("class_names"):
        given = p["class_names"].split(",")
        if len(given) != len(names):
            raise DataSourceError(f"class_names: {len(given)} names ({_short(given)}) but {path} has {len(names)} class "
                                  f"folders; allowed: exactly {len(names)} names, one per folder in sorted order")
        names = given
    split = Split(t["labels"].numpy().astype(np.int64), images=t["images"].numpy(),
                  domains=t["domains"].numpy().astype(np.int64) if "domains" in t else None)
    ds = RawDataset(path.name, "image", split, None, names)
    if "domain_names" in t:
        ds.domain_names = bytes(t["domain_names"].tolist()).decode().split("\n")
    return _with_derived_domains(ds, p)


def _labels_to_ids(raw: list, offset: int, class_names: list[str] | None,
                   partial: bool = False) -> tuple[np.ndarray, list[str]]:
    """Integer ids 0..C-1 and the class names. String labels: ids in the order of `class_names`
    when it names exactly the labels, else in sorted label order (then `class_names`, if given,
    renames them in that order). Either way `class_names` must hold one name per class; with
    `partial` (a test file) the labels may cover only some of the names."""
    blank = [i for i, v in enumerate(raw) if v is None or (isinstance(v, float) and math.isnan(v))
             or (isinstance(v, str) and not v.strip())]
    if blank:  # a blank would become a class of its own
        raise DataSourceError(f"{len(blank)} row(s) have no label (the first: data row {blank[0] + 1}); label or "
                              f"drop them")
    fractional = next((v for v in raw if isinstance(v, float) and not v.is_integer()), None)
    if fractional is not None:  # int() would truncate 1.5 to class 1
        raise DataSourceError(f"label {fractional!r} is not a whole number; labels are class ids (0, 1, ...) "
                              f"or class names")
    try:
        ints = np.asarray([int(v) for v in raw], dtype=np.int64) - offset
    except (TypeError, ValueError):
        uniq = sorted({str(v) for v in raw})
        if partial and class_names is not None and set(uniq) <= set(class_names):
            lookup = {v: i for i, v in enumerate(class_names)}
            return np.asarray([lookup[str(v)] for v in raw], dtype=np.int64), class_names
        if class_names is not None and len(class_names) != len(uniq):
            raise DataSourceError(
                f"class_names: {len(class_names)} names ({_short(class_names)}) for {len(uniq)} distinct labels "
                f"({_short(uniq)}); allowed: exactly {len(uniq)} names, one per label, or no class_names "
                f"(the labels themselves become the names)")
        order = class_names if class_names is not None and set(class_names) == set(uniq) else uniq
        lookup = {v: i for i, v in enumerate(order)}
        return np.asarray([lookup[str(v)] for v in raw], dtype=np.int64), class_names or uniq
    if len(ints) and ints.min() < 0:
        raise DataSourceError(
            f"labels go below 0 after subtracting label_offset={offset}; check label_offset"
        )
    n = int(ints.max()) + 1 if len(ints) else 0
    names = class_names or [str(i) for i in range(n)]
    if len(names) < n or (len(names) > n and not partial):
        raise DataSourceError(
            f"class_names: {len(names)} names ({_short(names)}) but the labels run 0..{n - 1} after label_offset="
            f"{offset}, {n} classes; allowed: exactly {n} names, one per class id")
    return ints, names


def _innermost(e: BaseException) -> str:
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return " ".join(str(e).split()) or type(e).__name__


def _short(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def _quiet_csv(datasets, path: str, kwargs: dict):
    """datasets' csv builder without its "Generating train split" progress bar: reading a local file
    is quick, and the bar would otherwise sit on stderr beside a one-line error."""
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset("csv", data_files=path, split="train", **kwargs)
    finally:
        if was:
            datasets.enable_progress_bars()


def _load_delimited(path: str, p: dict[str, str], delimiter: str, partial: bool = False) -> tuple[Split, list[str]]:
    import datasets

    path = str(Path(path).expanduser().resolve())
    has_header = p.get("header", "true").lower() not in ("none", "false", "0", "no")
    kwargs: dict = {"delimiter": delimiter}
    with open(path, "rb") as f:
        if b"\0" in f.read(65536):
            raise DataSourceError(f"{path} is not a text file (it holds NUL bytes); a {'CSV' if delimiter == ',' else 'TSV'} "
                                  f"source is UTF-8 text with a header row, e.g. text,label")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter=delimiter)
        first, second = next(reader, None), next(reader, None)
    if not first or (has_header and second is None):
        raise DataSourceError(f"{path} has no rows{' below its header' if first else ''}; a data source needs "
                              f"labelled samples")
    if not has_header:
        ncols = len(first)
        kwargs["column_names"] = [str(i) for i in range(ncols)]
        kwargs["header"] = None
    try:
        ds = _quiet_csv(datasets, path, kwargs)
    except Exception as e:  # datasets wraps pandas errors in several types: say the innermost
        raise DataSourceError(f"could not read {path}: {_innermost(e)}") from None
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
    labels, names = _labels_to_ids(ds[label_col], int(p.get("label_offset", 0)), names, partial)
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
    train = to_split(dsd[train_name], train_name)
    n = int(train.labels.max()) + 1 if len(train.labels) else 0
    if p.get("class_names"):
        given = p["class_names"].split(",")
        expected = len(names) or n
        if len(given) != expected:
            raise DataSourceError(
                f"class_names: {len(given)} names ({_short(given)}) but {name} has {expected} classes; allowed: "
                f"exactly {expected} names, one per class id")
        names = given
    if not names:
        names = [str(i) for i in range(n)]
    test = to_split(dsd[test_name], test_name) if test_name in dsd else None
    return RawDataset(name, "text", train, test, names)
