"""Image folders and tar archives as data, plus derived feature-shift domains.

Layout (inside a directory or a .tar/.tar.gz archive, below an optional `root` folder):
    <class>/<image>                 layout=class (default)
    <domain>/<class>/<image>        layout=domain/class (DomainNet, NICO++, Office-Caltech style)
An archive or folder holding a single top-level folder whose subfolders are classes (CIFAR-10's
`train/<class>/NNNN.jpg`) is entered automatically; `root=` picks one explicitly.

Images are decoded once to uint8 HxWx3 arrays of one size (`size`, default the first image's) and
cached on disk by the archive's path, size and modification time, so a sweep's trials and later
runs skip the decoding. (datasets' imagefolder builder would first write an Arrow copy of every
image; for small images decoding straight into one array is several times faster.)

Derived domains (`domains=identity,gray,invert,blur,lowcontrast`): for data without natural
domains, each image is given one of these fixed pixel transforms, in equal shares by a seeded
permutation, to build a feature non-IID (covariate shift) benchmark offline, in the manner of
CIFAR-10-C. They are labelled as derived wherever they are used.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from fedcore.seeds import Purpose

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DERIVED_DOMAINS = ("identity", "gray", "invert", "blur", "lowcontrast")


def _members(path: Path) -> list[tuple[str, object]]:
    """(relative path, handle) of every image file, sorted by path."""
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        return sorted((p.relative_to(path).as_posix(), p) for p in files)
    with tarfile.open(path) as tar:
        return sorted((m.name.lstrip("./"), m.name) for m in tar.getmembers()
                      if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES))


def _strip_root(rel: list[str], root: str | None, depth: int) -> tuple[list[str], str]:
    """Remove the `root` prefix (given, or one shared top folder when the layout is one level
    deeper than expected)."""
    if root:
        prefix = root.strip("/") + "/"
        return [r[len(prefix):] if r.startswith(prefix) else None for r in rel], prefix
    parts = [r.split("/") for r in rel]
    tops = {p[0] for p in parts}
    if len(tops) == 1 and all(len(p) == depth + 2 for p in parts):
        prefix = next(iter(tops)) + "/"
        return [r[len(prefix):] for r in rel], prefix
    return rel, ""


def read_image_folder(path: str | Path, layout: str = "class", root: str | None = None,
                      size: int | None = None) -> tuple[np.ndarray, list[str], list[str], list[str] | None]:
    """(images N x H x W x 3 uint8, class per image, sorted class names...) — see module doc.

    Returns images, class_of_each, domain_of_each (or None) and the relative paths."""
    from PIL import Image

    path = Path(path).expanduser().resolve()
    depth = 2 if layout == "domain/class" else 1
    members = _members(path)
    if not members:
        raise ValueError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    rel, prefix = _strip_root([m[0] for m in members], root, depth)
    keep = [(r, h) for r, (_, h) in zip(rel, members) if r is not None and len(r.split("/")) == depth + 1]
    if not keep:
        shown = members[0][0]
        raise ValueError(f"{path}: no image at <{layout}>/<file> below {prefix or 'the top'} (first file: {shown}); "
                         f"set layout=class or layout=domain/class, and root=<folder> if needed")
    tar = tarfile.open(path) if not path.is_dir() else None
    try:
        images = []
        for r, h in keep:
            data = tar.extractfile(h).read() if tar is not None else Path(h).read_bytes()
            try:
                img = Image.open(io.BytesIO(data)).convert("RGB")
            except OSError as e:  # PIL names the buffer, not the file
                raise ValueError(f"{path}: {r} is not a readable image ({type(e).__name__})") from None
            if size is None:
                size = img.size[0]
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            images.append(np.asarray(img, dtype=np.uint8))
    finally:
        if tar is not None:
            tar.close()
    parts = [r.split("/") for r, _ in keep]
    classes = [p[-2] for p in parts]
    domains = [p[0] for p in parts] if depth == 2 else None
    return np.stack(images), classes, domains, [r for r, _ in keep]


def derive_domains(images: np.ndarray, names: list[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Give each image one derived domain (equal shares, seeded) and apply its transform."""
    unknown = [n for n in names if n not in DERIVED_DOMAINS]
    if unknown:
        raise ValueError(f"unknown derived domain(s) {unknown}; allowed: {', '.join(DERIVED_DOMAINS)}")
    n = len(images)
    perm = np.random.default_rng([seed, Purpose.DERIVED_DOMAINS]).permutation(n)
    domain = np.empty(n, dtype=np.int64)
    domain[perm] = np.arange(n) % len(names)
    out = images.copy()
    for d, name in enumerate(names):
        sel = domain == d
        out[sel] = _transform(images[sel], name)
    return out, domain


def _transform(x: np.ndarray, name: str) -> np.ndarray:
    f = x.astype(np.float32)
    if name == "gray":
        f = np.repeat((f @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, axis=-1)
    elif name == "invert":
        f = 255.0 - f
    elif name == "blur":  # 3x3 box blur, edges replicated
        p = np.pad(f, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        h, w = f.shape[1:3]
        f = sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
    elif name == "lowcontrast":
        mean = f.mean(axis=(1, 2, 3), keepdims=True)
        f = 0.35 * f + 0.65 * mean
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)
