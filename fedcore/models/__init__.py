"""Model catalogue: names users type, and building a model for a dataset."""
from __future__ import annotations

import re

from torch import nn

from fedcore.models.clip import TINY_CLIP, clip_lora_width, is_clip
from fedcore.models.hf_text import HUB_ALIASES, TINY, WIDTHS, build_hf_classifier
from fedcore.models.textcnn import MLP, TextCNN
from fedcore.models.vision import TINY_VISION, VISION_WIDTHS, build_vision_classifier, is_vision

SCRATCH_MODELS = ("textcnn", "mlp")
CATALOGUE = ("textcnn", "mlp", "minilm-l6", *TINY, *HUB_ALIASES, *TINY_VISION, TINY_CLIP)
_HUB_ID = re.compile(r"^(hf:)?[\w.-]+/[\w.-]+$")


def is_transformer(name: str) -> bool:
    return name not in SCRATCH_MODELS


def check_model_name(name: str) -> None:
    if name in CATALOGUE or _HUB_ID.match(name) or name.startswith(("hf:", "timm:", "clip:")):
        return
    raise ValueError(
        f"unknown model {name!r}; allowed: {', '.join(CATALOGUE)}, a hub id such as "
        f"'org/model' or 'hf:<id>' (online), 'timm:<timm model name>', or 'clip:<open_clip arch>/<tag>'"
    )


def lora_width(mcfg) -> int | None:
    """Width of the LoRA target layers where known without loading the model."""
    if is_clip(mcfg.name):
        return clip_lora_width(mcfg.name)
    return WIDTHS.get(mcfg.name) or VISION_WIDTHS.get(mcfg.name)


def input_kind(name: str) -> str:
    return "features" if name == "mlp" else "image" if is_vision(name) or is_clip(name) else "text"


def build_model(mcfg, num_classes: int, vocab_size: int | None = None, in_features: int | None = None,
                class_names: list[str] | None = None) -> nn.Module:
    if mcfg.head == "zero_shot":
        if class_names is None or len(class_names) != num_classes:
            raise ValueError("model.head 'zero_shot' needs the class names of the data")
        if is_clip(mcfg.name):
            from fedcore.models.clip import build_clip_classifier

            return build_clip_classifier(mcfg, class_names)
        from fedcore.models.zero_shot import build_zero_shot_text

        return build_zero_shot_text(mcfg, class_names, max_len=64)
    if mcfg.name == "textcnn":
        return TextCNN(vocab_size, num_classes, mcfg.embed_dim, mcfg.num_filters,
                       tuple(mcfg.kernel_sizes), mcfg.dropout)
    if mcfg.name == "mlp":
        return MLP(in_features, num_classes, mcfg.hidden)
    if is_vision(mcfg.name):
        return build_vision_classifier(mcfg, num_classes)
    return build_hf_classifier(mcfg, num_classes, vocab_size or 30522)


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, train


__all__ = ["build_model", "check_model_name", "is_clip", "is_transformer", "lora_width", "trainable_names",
           "count_params", "CATALOGUE", "TextCNN", "MLP"]
