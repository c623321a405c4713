"""Zero-shot heads: a frozen foundation model as a classifier without training.

Text (sentence encoders such as MiniLM): a sample's sentence embedding (mean pooling over its
tokens, L2-normalised, as sentence-transformers does for all-MiniLM-L6-v2) against the embeddings
of one prompt per class (`template` filled with the class's prompt name), times a logit scale:

    z(x)_c = scale * cos(E(x), E(prompt_c))

the text analogue of CLIP's zero-shot recipe (METHODS.md 2.2 and 3.4). The logits serve as the
frozen teacher of Fed-LPFM and as the zero-shot baseline row of the studies.
"""
from __future__ import annotations

import torch

DEFAULT_TEMPLATE = "This text is about {}."
# prompt names that say what a terse label means (the label itself when absent)
PROMPT_NAMES = {"Sci/Tech": "science and technology", "World": "world news and politics"}


class TextZeroShot:
    def __init__(self, encoder: str = "minilm-l6", template: str = DEFAULT_TEMPLATE, scale: float = 100.0,
                 max_len: int = 64, batch_size: int = 128):
        from transformers import AutoModel

        from fedcore.models.hf_text import _quiet_transformers, load_tokenizer, minilm_path, hub_id

        _quiet_transformers()
        self.name, self.template, self.scale, self.max_len, self.batch_size = encoder, template, scale, max_len, batch_size
        self.tokenizer = load_tokenizer(encoder)
        src = minilm_path() if encoder == "minilm-l6" else hub_id(encoder)
        self.model = AutoModel.from_pretrained(src, local_files_only=encoder == "minilm-l6").eval()

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings (float32, N x d)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], truncation=True, max_length=self.max_len,
                                 padding=True, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)

    def prompts(self, class_names: list[str]) -> list[str]:
        return [self.template.format(PROMPT_NAMES.get(c, c).replace("_", " ")) for c in class_names]

    def logits(self, texts: list[str], class_names: list[str]) -> torch.Tensor:
        classes = self.embed(self.prompts(class_names))
        return self.scale * self.embed(texts) @ classes.T
