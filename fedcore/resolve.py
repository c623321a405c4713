"""A run config resolved against the registries: the one step above fedcore.config.

fedcore.config checks what its schema alone can tell. What needs the data sources, the models or the
methods is checked here, in one place: a source's URI (a local path made absolute, so that a worker
in another working directory still finds it), a model's and a teacher's names, the method's name and
its typed params, whether the tuning fits the model and the method, LoRA ranks against the layers'
width. The defaults that depend on them are filled in as well: `model.tuning` (LoRA for a
transformer, full for a model trained from scratch), a CLIP model's zero-shot head, and the teacher
of a zero-shot model or of a distilling method. Problems come as one ConfigError, one line each,
worded as the schema's own.

`make_config` and `load_config` are what every run is built from; resolving is idempotent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fedcore.config import ConfigError, RunConfig, TeacherConfig, error_line, parse_config, read_config
from fedcore.data.sources import check_uri
from fedcore.methods import METHODS, method_class
from fedcore.models import check_model_name, is_clip, is_transformer, lora_width


def make_config(data: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """A resolved RunConfig from a nested dict plus dotted overrides, raising ConfigError."""
    return resolve(parse_config(data, **overrides))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A resolved RunConfig from a YAML config file (optional) and dotted overrides."""
    return resolve(read_config(path, overrides))


def _refuse(lines: list[str]) -> None:
    if lines:
        raise ConfigError("invalid config: " + "; ".join(lines))


def _names(cfg: RunConfig) -> RunConfig:
    """Each name looked up in its registry; every unknown one reported at once."""
    lines: list[str] = []
    data = {}
    for field in ("source", "test_source"):
        value = getattr(cfg.data, field)
        if value is not None:
            try:
                data[field] = check_uri(value)
            except ValueError as e:
                lines.append(error_line(f"data.{field}", str(e), value))
    teachers = (cfg.teacher and cfg.teacher.per_client) or []
    for loc, name, value in [("model.name", cfg.model.name, cfg.model.name),
                             *[("teacher.per_client", n, teachers) for n in teachers]]:
        try:
            check_model_name(name)
        except ValueError as e:
            lines.append(error_line(loc, str(e), value))
    try:
        # a built-in, a plugin's entry point name, or 'module:Class' (docs/plugins.md); an unknown name
        # or an unusable plugin is one 'method.name: ...' line, bad params name their 'method.params.' key
        method_class(cfg.method.name).parse_params(cfg.method.params)
    except ValueError as e:
        lines.append(error_line("method", str(e)))
    _refuse(lines)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=data)}) if data else cfg


def _tuning(cfg: RunConfig) -> RunConfig:
    """The model's head and tuning: checked against what the model is, defaults filled."""
    m = cfg.model
    update: dict[str, Any] = {}
    if is_clip(m.name):  # a CLIP classifier is its zero-shot head (the text tower's prompt embeddings)
        if "head" in m.model_fields_set and m.head != "zero_shot":
            _refuse([f"model.head: {m.head!r} for {m.name!r}; allowed: 'zero_shot' (CLIP classifies by its class "
                     f"prompt embeddings)"])
        update["head"] = "zero_shot"
    head = update.get("head", m.head)
    if head == "zero_shot" and not is_transformer(m.name):
        _refuse([f"model.head: 'zero_shot' needs a pretrained encoder with prompts, but {m.name!r} is trained from "
                 f"scratch; allowed for {m.name!r}: 'linear'"])
    if m.tuning is None:
        update["tuning"] = "lora" if is_transformer(m.name) else "full"
    elif m.tuning == "head" and head == "zero_shot":
        _refuse(["model.tuning: 'head' has nothing to train with model.head 'zero_shot' (the head is the fixed "
                 "class prompt embeddings); allowed: 'lora' or 'full'"])
    elif m.tuning != "full" and not is_transformer(m.name):
        _refuse([f"model.tuning: {m.tuning!r} needs a transformer encoder, but {m.name!r} is trained from scratch; "
                 f"allowed for {m.name!r}: 'full'"])
    # object.__setattr__, as the schema's own defaults: model_copy would count them as fields set
    model = m.model_copy()
    for key, value in update.items():
        object.__setattr__(model, key, value)
    return cfg.model_copy(update={"model": model})


def _lora(cfg: RunConfig) -> None:
    if cfg.model.tuning != "lora":
        return
    lora, width = cfg.model.lora, lora_width(cfg.model)
    if width is not None and lora.resident_rank > width:
        _refuse([f"model.lora: rank {lora.resident_rank} is above the width {width} of {cfg.model.name}'s LoRA target "
                 f"layers; allowed: 1..{width}"])
    if lora.ranks is not None and len(lora.ranks) != cfg.partition.num_clients:
        _refuse([f"model.lora.ranks: {len(lora.ranks)} ranks for {cfg.partition.num_clients} clients; allowed: one "
                 f"rank per client"])


def _teacher(cfg: RunConfig) -> RunConfig:
    """The teacher a run gets without naming one: a zero-shot model's own prior, or the default
    teacher of a distilling method."""
    if cfg.teacher is not None:
        return cfg
    m = cfg.model
    if m.head == "zero_shot":
        # the model's own frozen prior, read the same way: the teacher of FedPuReL's alignment, and the
        # zero-shot row of any run that fine-tunes from it
        teacher = TeacherConfig(name=m.name, template=m.prompt, scale=m.logit_scale, max_len=cfg.data.max_len)
    elif method_class(cfg.method.name).needs_teacher:
        teacher = TeacherConfig()
    else:
        return cfg
    out = cfg.model_copy()
    object.__setattr__(out, "teacher", teacher)
    return out


def _method_fits(cfg: RunConfig) -> None:
    name, method, lora = cfg.method.name, method_class(cfg.method.name), cfg.model.lora
    if cfg.model.tuning == "lora" and lora.heterogeneous and not method.handles_mixed_ranks:
        # one rule for every method: a method declares that it rescales factors across ranks
        able = ", ".join(n for n, m in METHODS.items() if m.handles_mixed_ranks)
        _refuse([f"model.lora: method {name!r} cannot train clients of different LoRA ranks "
                 f"({method.mixed_ranks_refusal}); got {lora.describe_ranks()}; allowed: one rank for every client "
                 f"(rank_profile 'homogeneous'), or a method that handles mixed ranks: {able}"])
    if method.requires_lora and cfg.model.tuning != "lora":
        _refuse([f"method.name: {name!r} aggregates LoRA factors but model.tuning is {cfg.model.tuning!r}; "
                 f"allowed: model.tuning 'lora'"])
    # Fed-LPFM's teacher ablations change only the training rows' teacher logits, which only a
    # distilling method reads; anywhere else they would build a teacher per client for nothing
    t = cfg.teacher
    if t is not None and t.per_client_heads and not getattr(method, "distils_client_teachers", False):
        field, value = (("teacher.per_client", t.per_client) if t.per_client is not None
                        else ("teacher.finetune_epochs", t.finetune_epochs))
        able = ", ".join(n for n, m in METHODS.items() if getattr(m, "distils_client_teachers", False))
        _refuse([f"{field}: {value!r} with method {name!r}, which does not distil per-client teachers; allowed: "
                 f"{'null' if field == 'teacher.per_client' else '0'}, or method {able}"])


def resolve(cfg: RunConfig) -> RunConfig:
    """`cfg` checked against the registries, with the defaults that depend on them filled in."""
    cfg = _tuning(_names(cfg))
    _lora(cfg)
    cfg = _teacher(cfg)
    _method_fits(cfg)
    return cfg
