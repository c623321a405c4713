"""A frozen zero-shot teacher's logits over a dataset, computed once and cached by content hash.

Used by methods that distil a foundation model (Fed-LPFM: `needs_teacher`) or align with it
(FedPuReL), and for the zero-shot baseline row: the teacher's accuracy on the global test set and on
the clients' test splits is reported with every evaluation (`teacher_acc`, ...), so each study that
uses a foundation model carries it. Text teachers are the sentence-embedding heads of
fedcore/models/zero_shot.py (MiniLM offline); image teachers are CLIP's (fedcore/models/clip.py:
tiny-clip offline, clip:<arch>/<tag> pretrained).
"""
from __future__ import annotations

import torch

from fedcore.data.tokenize import cache_dir, cached, content_hash


def teacher_logits(tcfg, train, test, class_names: list[str], kind: str,
                   cache: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train logits, test logits) of the teacher over two splits (fedcore.data.sources.Split)."""
    from fedcore.models import is_clip

    if is_clip(tcfg.name) != (kind == "image"):
        raise ValueError(f"teacher.name: {tcfg.name!r} is a {'CLIP (image)' if is_clip(tcfg.name) else 'text'} "
                         f"zero-shot head but the data gives {kind}; allowed: "
                         f"{'tiny-clip or clip:<arch>/<tag>' if kind == 'image' else 'a text encoder such as minilm-l6'}")
    if kind == "image":
        from fedcore.models.clip import DEFAULT_PROMPT, ImageZeroShot

        template = tcfg.template or DEFAULT_PROMPT
        key = content_hash("zero-shot-image-v1", tcfg.name, template, tcfg.scale, class_names, train.images, test.images)

        def build() -> dict[str, torch.Tensor]:
            head = ImageZeroShot(tcfg.name, template, tcfg.scale)
            pixels = [torch.as_tensor(s.images).permute(0, 3, 1, 2) for s in (train, test)]
            return {"train": head.logits(pixels[0], class_names), "test": head.logits(pixels[1], class_names)}
    else:
        from fedcore.models.zero_shot import DEFAULT_TEMPLATE, TextZeroShot

        template = tcfg.template or DEFAULT_TEMPLATE
        key = content_hash("zero-shot-v1", tcfg.name, template, tcfg.scale, tcfg.max_len, class_names,
                           train.texts, test.texts)

        def build() -> dict[str, torch.Tensor]:
            head = TextZeroShot(tcfg.name, template, tcfg.scale, tcfg.max_len)
            return {"train": head.logits(train.texts, class_names), "test": head.logits(test.texts, class_names)}

    t = cached(key, cache_dir(cache), build)
    return t["train"], t["test"]
