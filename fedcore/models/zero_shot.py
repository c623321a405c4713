"""Zero-shot heads: a frozen foundation model as a classifier without training.

Text (sentence encoders such as MiniLM): a sample's sentence embedding (mean pooling over its
tokens, L2-normalised, as sentence-transformers does for all-MiniLM-L6-v2) against the embeddings
of one prompt per class (`template` filled with the class's prompt name), times a logit scale:

    z(x)_c = scale * cos(E(x), E(prompt_c))

the text analogue of CLIP's zero-shot recipe (docs/methods.md "Foundation-model priors"). The logits serve as the
frozen teacher of Fed-LPFM and as the zero-shot baseline row of the studies. `zero_shot_features`
gives the two factors of those logits (the samples' and the class prompts' normalised embeddings,
text or CLIP image), from which fedcore/teacher.py fine-tunes a client's head.
"""
from __future__ import annotations

import re

import torch
from torch import nn

DEFAULT_TEMPLATE = "This text is about {}."
# prompt names that say what a terse label means (the label itself when absent)
PROMPT_NAMES = {"Sci/Tech": "science and technology", "World": "world news and politics"}


def prompt_name(label: str) -> str:
    """A class name as words: the table above, else underscores and CamelCase split (OfficeHolder ->
    office holder)."""
    if label in PROMPT_NAMES:
        return PROMPT_NAMES[label]
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label.replace("_", " "))
    return words if words == label else words.lower()


def load_encoder(name: str) -> nn.Module:
    """The bare text encoder (no head) of `name`, in eval mode. Tiny configs are seeded on their own,
    so that a teacher and a student built from the same name share the same frozen weights."""
    from transformers import AutoModel, CONFIG_MAPPING

    from fedcore.models.hf_text import TINY, _from_hub, _quiet_transformers, hub_id, minilm_path

    _quiet_transformers()
    if name in TINY:
        spec = dict(TINY[name])
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return AutoModel.from_config(CONFIG_MAPPING[spec.pop("model_type")](vocab_size=30522, **spec)).eval()
    src = minilm_path() if name == "minilm-l6" else hub_id(name)
    return _from_hub(AutoModel.from_pretrained, name, src, local_files_only=name == "minilm-l6").eval()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the unmasked tokens, L2-normalised (sentence-transformers' pooling for MiniLM)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


class TextZeroShot:
    def __init__(self, encoder: str = "minilm-l6", template: str = DEFAULT_TEMPLATE, scale: float = 100.0,
                 max_len: int = 64, batch_size: int = 128):
        from fedcore.models.hf_text import load_tokenizer

        self.name, self.template, self.scale, self.max_len, self.batch_size = encoder, template, scale, max_len, batch_size
        self.tokenizer = load_tokenizer(encoder)
        self.model = load_encoder(encoder)

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings (float32, N x d)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], truncation=True, max_length=self.max_len,
                                 padding=True, return_tensors="pt")
            out.append(mean_pool(self.model(**enc).last_hidden_state, enc["attention_mask"]))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)

    def prompts(self, class_names: list[str]) -> list[str]:
        return [self.template.format(prompt_name(c)) for c in class_names]

    def class_embeddings(self, class_names: list[str]) -> torch.Tensor:
        return self.embed(self.prompts(class_names))

    def logits(self, texts: list[str], class_names: list[str]) -> torch.Tensor:
        return self.scale * self.embed(texts) @ self.class_embeddings(class_names).T


class ZeroShotTextClassifier(nn.Module):
    """A text encoder whose head is its own zero-shot head: logits = scale * cos(E(x), E(prompt_c)),
    the prompt embeddings computed once by the frozen encoder and kept fixed (as CLIP-LoRA keeps the
    text tower). With LoRA at initialisation (B = 0) it IS the zero-shot model, so fine-tuning starts
    from the prior, which is what FedPuReL's balancedness argument is about."""

    def __init__(self, encoder: nn.Module, class_embeddings: torch.Tensor, scale: float):
        super().__init__()
        self.encoder, self.scale = encoder, scale
        self.register_buffer("class_embeddings", class_embeddings.clone())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return self.scale * mean_pool(hidden, batch["attention_mask"]) @ self.class_embeddings.T


def build_zero_shot_text(mcfg, class_names: list[str], max_len: int) -> ZeroShotTextClassifier:
    from fedcore.models.hf_text import checked_rank, lora_targets

    if mcfg.tuning == "head":
        raise ValueError("model.tuning: 'head' has nothing to train with model.head 'zero_shot' (its head is the "
                         "fixed prompt embeddings); allowed: 'lora' or 'full'")
    head = TextZeroShot(mcfg.name, mcfg.prompt or DEFAULT_TEMPLATE, mcfg.logit_scale, max_len)
    classes = head.class_embeddings(class_names)
    encoder = head.model
    if mcfg.tuning == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        targets = lora_targets(encoder.config.model_type, mcfg.lora.target_modules)
        rank = checked_rank(encoder, targets, mcfg)
        encoder = get_peft_model(encoder, LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=rank,
                                                     lora_alpha=mcfg.lora.alpha, lora_dropout=mcfg.lora.dropout,
                                                     target_modules=targets))
    else:
        encoder.requires_grad_(True)
    return ZeroShotTextClassifier(encoder, classes, mcfg.logit_scale)


def zero_shot_features(name: str, template: str, max_len: int, split, class_names: list[str],
                       kind: str) -> dict[str, torch.Tensor]:
    """{"x": the samples' normalised embeddings (N x d), "classes": the class prompts' (C x d)}, the
    factors of the zero-shot logits scale * x @ classes.T, for a text encoder or a CLIP model."""
    if kind == "image":
        return _image_features(name, template, torch.as_tensor(split.images).permute(0, 3, 1, 2), class_names)
    head = TextZeroShot(name, template, max_len=max_len)
    return {"x": head.embed(split.texts), "classes": head.class_embeddings(class_names)}


@torch.inference_mode()
def _image_features(name: str, template: str, pixels: torch.Tensor, class_names: list[str],
                    batch_size: int = 256) -> dict[str, torch.Tensor]:
    """CLIP's normalised image embeddings and class prompt embeddings, the way ImageZeroShot.logits
    computes them before its product."""
    from fedcore.models.clip import load_clip, preprocess, prompts, text_embeddings

    clip = load_clip(name)
    classes = text_embeddings(clip, prompts(template, class_names), batch_size)
    mean, std = (torch.tensor(v, device=classes.device).view(1, 3, 1, 1) for v in (clip.mean, clip.std))
    out = [nn.functional.normalize(clip.model.encode_image(preprocess(pixels[i:i + batch_size], clip.image_size,
                                                                      mean, std)).float(), dim=-1).cpu()
           for i in range(0, len(pixels), batch_size)]
    return {"x": torch.cat(out) if out else torch.zeros(0, classes.shape[1]), "classes": classes.cpu()}
