"""A frozen zero-shot teacher's logits over a dataset, computed once and cached by content hash.

Used by methods that distil a foundation model (Fed-LPFM: `needs_teacher`) and for the zero-shot
baseline row: the teacher's accuracy on the global test set is reported with every evaluation
(`teacher_acc`, `teacher_balancedness`), so each study that uses a foundation model carries it.
Text only for now: the sentence-embedding head of fedcore/models/zero_shot.py (MiniLM offline).
"""
from __future__ import annotations

import torch

from fedcore.data.tokenize import cache_dir, cached, content_hash


def teacher_logits(tcfg, train_texts: list[str], test_texts: list[str], class_names: list[str],
                   cache: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    from fedcore.models.zero_shot import TextZeroShot

    key = content_hash("zero-shot-v1", tcfg.name, tcfg.template, tcfg.scale, tcfg.max_len, class_names,
                       train_texts, test_texts)

    def build() -> dict[str, torch.Tensor]:
        head = TextZeroShot(tcfg.name, tcfg.template, tcfg.scale, tcfg.max_len)
        return {"train": head.logits(train_texts, class_names), "test": head.logits(test_texts, class_names)}

    t = cached(key, cache_dir(cache), build)
    return t["train"], t["test"]
