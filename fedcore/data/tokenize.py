"""Turn raw splits into tensors once, cached on disk by content hash.

Text for TextCNN goes through a word vocabulary (Kim 2014 / the paper's notebook: lowercase,
`[^a-z\\s]` stripped, most frequent words, PAD=0, UNK=1); text for transformers through the
model's own tokenizer. Sequences are padded to max_len here and trimmed to the longest sequence
of each batch at training time.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch

PAD, UNK = 0, 1
_NON_ALPHA = re.compile(r"[^a-z\s]")


def cache_dir(configured: str | None = None) -> Path:
    root = configured or os.environ.get("FEDCORE_CACHE") or Path.home() / ".cache" / "fedcore"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_hash(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(part.tobytes())
        elif isinstance(part, (list, tuple)):
            for item in part:
                h.update(str(item).encode("utf-8", "surrogatepass"))
                h.update(b"\x00")
        else:
            h.update(str(part).encode())
        h.update(b"\x01")
    return h.hexdigest()[:24]


def cached(key: str, directory: Path, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Return the tensors stored under `key`, building and saving them on a miss."""
    path = directory / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a truncated file from an interrupted write: rebuild it
            path.unlink(missing_ok=True)
    tensors = build()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(tensors, tmp)
    os.replace(tmp, path)  # atomic, so concurrent trials never read half a file
    return tensors


def simple_words(text: str) -> list[str]:
    return _NON_ALPHA.sub(" ", text.lower()).split()


def build_vocab(texts: list[str], size: int) -> dict[str, int]:
    counts = Counter(w for t in texts for w in simple_words(t))
    # ties broken alphabetically so the vocabulary does not depend on dict order
    words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - 2]
    return {w: i + 2 for i, (w, _) in enumerate(words)}


def encode_words(texts: list[str], vocab: dict[str, int], max_len: int) -> dict[str, torch.Tensor]:
    ids = torch.full((len(texts), max_len), PAD, dtype=torch.long)
    lengths = torch.zeros(len(texts), dtype=torch.long)
    for i, t in enumerate(texts):
        toks = [vocab.get(w, UNK) for w in simple_words(t)[:max_len]] or [UNK]
        ids[i, : len(toks)] = torch.tensor(toks)
        lengths[i] = len(toks)
    return {"input_ids": ids, "lengths": lengths}


def encode_hf(texts: list[str], tokenizer, max_len: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding="max_length", return_tensors="pt")
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    out["lengths"] = enc["attention_mask"].sum(1)
    return out
