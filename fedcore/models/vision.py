"""timm vision backbones (ViT, MLP-Mixer, any timm model) with LoRA through peft, full or head-only
tuning.

`tiny-vit` and `tiny-mixer` are small randomly initialised configs (32x32 input, patch 4) that run
offline and on a CPU; `timm:<name>` is any timm model, pretrained weights from the hub (online),
e.g. timm:vit_base_patch16_224.augreg2_in21k_ft_in1k or timm:mixer_b16_224.goog_in21k_ft_in1k as in
LoRA-FAIR. Batches carry uint8 pixels; the wrapper scales, normalises with the model's own mean and
std, and resizes to its input size, so one cached dataset serves every backbone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TINY_VISION = {
    "tiny-vit": ("vit", dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)),
    "tiny-mixer": ("mixer", dict(img_size=32, patch_size=4, embed_dim=64, num_blocks=2)),
}
VISION_WIDTHS = {"tiny-vit": 64, "tiny-mixer": 32}  # Mixer: token MLP 64 -> 32 -> 64 (patches), channel MLP 64 -> 256 -> 64
# LoRA targets per family: the attention projection of ViT (as LoRA-FAIR); every MLP layer of Mixer
LORA_TARGETS = {"vit": ["qkv"], "mixer": ["fc1", "fc2"]}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def is_vision(name: str) -> bool:
    return name in TINY_VISION or name.startswith("timm:")


def _family(model: nn.Module) -> str:
    name = type(model).__name__.lower()
    return "vit" if "visiontransformer" in name else "mixer" if "mixer" in name else name


class ImageClassifier(nn.Module):
    """forward(batch) -> logits, from batch["pixels"] (uint8, N x 3 x H x W)."""

    def __init__(self, model: nn.Module, size: int | None, mean, std):
        super().__init__()
        self.model, self.size = model, size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["pixels"].float().div_(255)
        if self.size is not None and (x.shape[-1] != self.size or x.shape[-2] != self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model((x - self.mean) / self.std)


def _timm_model(name: str, num_classes: int, init: str) -> nn.Module:
    import timm

    if name in TINY_VISION:
        family, kwargs = TINY_VISION[name]
        if family == "vit":
            from timm.models.vision_transformer import VisionTransformer

            return VisionTransformer(num_classes=num_classes, **kwargs)
        from timm.models.mlp_mixer import MlpMixer

        return MlpMixer(num_classes=num_classes, **kwargs)
    arch = name.removeprefix("timm:")
    try:
        return timm.create_model(arch, pretrained=init == "pretrained", num_classes=num_classes)
    except RuntimeError as e:  # unknown architecture
        raise ValueError(f"model.name: {name!r}: {e}") from None
    except OSError as e:  # weights not reachable
        raise ValueError(f"model.name: could not fetch the pretrained weights of {name!r} ({str(e)[:160]}); "
                         f"offline, use tiny-vit / tiny-mixer or model.init 'random'") from None


def build_vision_classifier(mcfg, num_classes: int) -> ImageClassifier:
    model = _timm_model(mcfg.name, num_classes, mcfg.init)
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    size = int((pcfg.get("input_size") or (3, 32, 32))[-1]) if mcfg.name not in TINY_VISION else 32
    if mcfg.init == "random" and mcfg.name not in TINY_VISION:
        size = None  # a student trained from scratch sees the data at its own size (no 32 -> 224 resize)
    mean, std = pcfg.get("mean", IMAGENET_MEAN), pcfg.get("std", IMAGENET_STD)
    head = pcfg.get("classifier", "head")
    if mcfg.tuning == "lora":
        from peft import LoraConfig, get_peft_model

        from fedcore.models.hf_text import checked_rank

        family = _family(model)
        targets = list(mcfg.lora.target_modules or LORA_TARGETS.get(family, []))
        if not targets:
            raise ValueError(f"model.lora.target_modules: no default for {mcfg.name} ({family}); name the modules")
        rank = checked_rank(model, targets, mcfg)
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=mcfg.lora.alpha, lora_dropout=mcfg.lora.dropout,
                                                 target_modules=targets, modules_to_save=[head]))
    elif mcfg.tuning == "head":
        for n, p in model.named_parameters():
            p.requires_grad = n.split(".")[0] == head
    return ImageClassifier(model, size, mean, std)
