"""CLIP (open_clip): the image zero-shot head and the image classifier fine-tuned from it.

Names: `tiny-clip`, a small randomly initialised CLIP built from a fixed seed (runs offline, on a
CPU; every build gives the same weights), and `clip:<arch>/<pretrained tag>`, any open_clip
architecture with pretrained weights (online or from the Hugging Face cache), e.g.
clip:ViT-B-16/openai or clip:ViT-B-32/laion2b_s34b_b79k. Tags may also be a local checkpoint file.

Zero-shot (CLIP's recipe): z(x)_c = scale * cos(E_img(x), E_txt(template.format(class_c))).
Fine-tuning keeps that head fixed: the normalised class prompt embeddings are computed once with
the frozen text tower, stored as a buffer, and the text tower is dropped; only the visual tower
adapts. LoRA targets the visual attention's q, k and v projections (CLIP-LoRA). open_clip's ViT
packs them in one nn.MultiheadAttention; peft 0.21 can adapt that module but does so by deleting
and re-registering the frozen weights on every forward (new Parameter objects, base weights
recomputed as (W + BA) - BA), and it always adapts out_proj too. So, as CLIP-LoRA does, each
visual attention is re-expressed with separate q/k/v nn.Linear layers holding the same weights
(same function) and peft adapts those as plain Linear layers: A [r, in], B [out, r]. With B = 0
at initialisation the classifier's logits are exactly the zero-shot head's.

Pixels arrive as uint8 N x 3 x H x W; they are scaled to [0, 1], resized (bilinear) to the model's
input size and normalised with its mean and std, as in fedcore.models.vision.
"""
from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from fedcore.models.hf_text import ModelLoadError, checked_rank

TINY_CLIP = "tiny-clip"
TINY_CFG = dict(embed_dim=32,
                vision_cfg=dict(layers=2, width=64, head_width=32, patch_size=4, image_size=32, mlp_ratio=2.0),
                text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2, mlp_ratio=2.0))
DEFAULT_PROMPT = "a photo of a {}."
LORA_TARGETS = ["q_proj", "k_proj", "v_proj"]
FORMS = "tiny-clip (offline) or clip:<open_clip arch>/<pretrained tag>, e.g. clip:ViT-B-16/openai"


def is_clip(name: str) -> bool:
    return name == TINY_CLIP or name.startswith("clip:")


def _parse(name: str) -> tuple[str, str]:
    import open_clip

    arch, _, tag = name.removeprefix("clip:").partition("/")
    if not name.startswith("clip:") or not arch or not tag:
        raise ValueError(f"model.name: {name!r} is not a CLIP model name; allowed: {FORMS}")
    if arch not in open_clip.list_models():
        raise ValueError(f"model.name: unknown open_clip architecture {arch!r} in {name!r}; allowed: {FORMS}, "
                         f"<arch> one of open_clip.list_models()")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags and not os.path.isfile(tag):
        raise ValueError(f"model.name: {arch} has no pretrained tag {tag!r}; allowed: {', '.join(tags) or 'none'} "
                         f"(or a checkpoint file)")
    return arch, tag


def clip_lora_width(name: str) -> int | None:
    """Width of the default LoRA targets (the visual tower's width), from the config alone."""
    if name == TINY_CLIP:
        return TINY_CFG["vision_cfg"]["width"]
    import open_clip

    cfg = open_clip.get_model_config(name.removeprefix("clip:").partition("/")[0]) or {}
    vision = cfg.get("vision_cfg", {})
    return None if "timm_model_name" in vision or not isinstance(vision.get("width"), int) else vision["width"]


class SplitAttention(nn.Module):
    """Self-attention nn.MultiheadAttention with q, k, v as separate nn.Linear layers (same weights)."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("SplitAttention: only plain self-attention (packed in_proj) is supported")
        d, w, b = mha.embed_dim, mha.in_proj_weight.detach(), mha.in_proj_bias
        self.heads, self.batch_first, self.dropout = mha.num_heads, mha.batch_first, mha.dropout
        for i, key in enumerate(("q_proj", "k_proj", "v_proj")):
            # skip_init: no random init (it would draw from the global RNG), the weights are copied in
            lin = nn.utils.skip_init(nn.Linear, d, d, bias=b is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[i * d:(i + 1) * d])
                if b is not None:
                    lin.bias.copy_(b.detach()[i * d:(i + 1) * d])
            setattr(self, key, lin)
        self.out_proj = mha.out_proj

    def forward(self, query, key, value, need_weights=False, attn_mask=None, **_):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, d = query.shape
        heads = lambda t: t.reshape(n, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        if attn_mask is not None:  # MHA: True = blocked, masks may be (N * heads) x L x S; SDPA: True = attend
            attn_mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask
            attn_mask = attn_mask.view(n, self.heads, *attn_mask.shape[-2:]) if attn_mask.dim() == 3 else attn_mask
        out = F.scaled_dot_product_attention(heads(self.q_proj(query)), heads(self.k_proj(key)),
                                             heads(self.v_proj(value)), attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def split_attention(visual: nn.Module) -> nn.Module:
    for block in getattr(getattr(visual, "transformer", None), "resblocks", []):
        if isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            block.attn = SplitAttention(block.attn)
    return visual


@dataclass
class LoadedClip:
    model: nn.Module  # open_clip CLIP, eval mode, visual attention split
    tokenizer: object
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _hub_unreachable() -> bool:
    # huggingface_hub retries an unreachable hub for ~45 s per file; fail at once when it surely is
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    try:
        socket.getaddrinfo(urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname, 443)
        return False
    except OSError:
        return True


def _cached_checkpoint(cfg: dict) -> str | None:
    """The tag's weights file in the Hugging Face cache (safetensors first, as open_clip), or None."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(cfg.get("hf_hub") or "")
    filename = filename or HF_WEIGHTS_NAME
    stem, ext = os.path.splitext(filename)
    safe = (HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME
            else stem + ".safetensors" if ext in (".bin", ".pth") else None)
    for f in filter(None, (safe, filename)):
        path = try_to_load_from_cache(repo, f) if repo else None
        if isinstance(path, str):
            return path
    return None


@functools.lru_cache(maxsize=1)
def _simple_tokenizer():
    # open_clip's BPE vocabulary ships with the package (offline); reading it takes ~0.5 s
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=TINY_CFG["text_cfg"]["context_length"])


def load_clip(name: str) -> LoadedClip:
    """The open_clip model (eval mode, visual attention split), its tokenizer, input size, mean, std."""
    import open_clip

    arch, tag = (None, None) if name == TINY_CLIP else _parse(name)
    pcfg = {} if tag is None or os.path.isfile(tag) else open_clip.get_pretrained_cfg(arch, tag)
    source = tag if tag is None or os.path.isfile(tag) else _cached_checkpoint(pcfg)
    if tag is not None and source is None and _hub_unreachable():
        raise ModelLoadError(f"model.name: the pretrained weights of {name!r} are not in the Hugging Face cache "
                             f"and the hub cannot be reached; offline, use {TINY_CLIP}")
    with torch.random.fork_rng(devices=[]):  # building draws no numbers from the run's RNG
        if tag is None:
            torch.manual_seed(0)  # the same tiny weights on every build: teacher and student agree
            model, tokenizer = open_clip.model.CLIP(**TINY_CFG), _simple_tokenizer()
        else:
            try:
                model = open_clip.create_model(arch, pretrained=source or tag, require_pretrained=True,
                                               force_quick_gelu=bool(pcfg.get("quick_gelu")))
                tokenizer = open_clip.get_tokenizer(arch)
            except (RuntimeError, OSError) as e:  # open_clip reports failed downloads as these
                raise ModelLoadError(f"model.name: could not load {name!r} ({str(e).strip()[:200]}); "
                                     f"offline, use {TINY_CLIP}") from None
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    mean = tuple(pcfg.get("mean") or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(pcfg.get("std") or open_clip.OPENAI_DATASET_STD)
    split_attention(model.visual)
    return LoadedClip(model.eval(), tokenizer, size, mean, std)


def preprocess(pixels: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = pixels.to(mean.device).float().div_(255)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return (x - mean) / std


def _stats(clip: LoadedClip) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(clip.mean).view(1, 3, 1, 1), torch.tensor(clip.std).view(1, 3, 1, 1)


def prompts(template: str, class_names: list[str]) -> list[str]:
    return [template.format(c.replace("_", " ")) for c in class_names]


@torch.no_grad()
def text_embeddings(clip: LoadedClip, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text-tower embeddings (float32, N x embed_dim)."""
    device = next(clip.model.parameters()).device
    out = [clip.model.encode_text(clip.tokenizer(texts[i:i + batch_size]).to(device)).float()
           for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(out), dim=-1)


class ImageZeroShot:
    def __init__(self, name: str = TINY_CLIP, template: str = DEFAULT_PROMPT, scale: float = 100.0,
                 batch_size: int = 256):
        self.name, self.template, self.scale, self.batch_size = name, template, scale, batch_size
        self.clip = load_clip(name)
        self.model = self.clip.model

    def prompts(self, class_names: list[str]) -> list[str]:
        return prompts(self.template, class_names)

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        classes = text_embeddings(self.clip, self.prompts(class_names), self.batch_size)
        mean, std = (t.to(classes.device) for t in _stats(self.clip))
        out = []
        for i in range(0, len(pixels), self.batch_size):
            image = self.model.encode_image(preprocess(pixels[i:i + self.batch_size], self.clip.image_size, mean, std))
            out.append((self.scale * F.normalize(image.float(), dim=-1) @ classes.T).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(class_names))


class ClipClassifier(nn.Module):
    """forward(batch) -> scale * cos(visual(batch["pixels"]), fixed class prompt embeddings)."""

    def __init__(self, visual: nn.Module, class_embeddings: torch.Tensor, size, mean, std, scale: float):
        super().__init__()
        self.visual, self.size, self.scale = visual, tuple(size), float(scale)
        self.register_buffer("text_embeddings", class_embeddings.detach().clone())
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.visual(preprocess(batch["pixels"], self.size, self.mean, self.std))
        return self.scale * F.normalize(image.float(), dim=-1) @ self.text_embeddings.T


def build_clip_classifier(mcfg, class_names: list[str]) -> ClipClassifier:
    tuning = mcfg.tuning or "lora"
    if tuning == "head":
        raise ValueError(f"model.tuning: 'head' has nothing to train for {mcfg.name}: its head is the fixed class "
                         f"prompt embeddings; use 'lora' or 'full'")
    if tuning not in ("lora", "full"):
        raise ValueError(f"model.tuning: {tuning!r}; allowed for CLIP: lora, full")
    clip = load_clip(mcfg.name)
    classes = text_embeddings(clip, prompts(getattr(mcfg, "prompt", None) or DEFAULT_PROMPT, class_names))
    visual = clip.model.visual  # the text tower goes with `clip`: only the visual tower is trained
    if tuning == "lora":
        from peft import LoraConfig, get_peft_model

        targets = list(mcfg.lora.target_modules or LORA_TARGETS)
        rank = checked_rank(visual, targets, mcfg)
        visual = get_peft_model(visual, LoraConfig(r=rank, lora_alpha=mcfg.lora.alpha,
                                                   lora_dropout=mcfg.lora.dropout, target_modules=targets))
    else:
        visual.requires_grad_(True)
    scale = getattr(mcfg, "logit_scale", None)
    return ClipClassifier(visual, classes, clip.image_size, clip.mean, clip.std, 100.0 if scale is None else scale)
