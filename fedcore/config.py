"""Typed, validated experiment config: the schema, the floor of fedcore (it imports no other part).

Everything a run depends on lives here, so a config can be checked before any model, data or
Ray worker exists. Errors are raised as `ConfigError` with one line per problem naming the field,
the value and what is allowed. This module checks what the schema alone can tell; fedcore/resolve.py
checks the rest against the registries (data sources, models, methods) and fills the defaults that
depend on them: `fedcore.resolve.make_config` is the config every run is built from.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config value is invalid; the message names the field, the value and what is allowed."""


class TextLoader(yaml.SafeLoader):
    """safe_load's loader that reads dates and times as the strings they were written as: a run's
    config travels as JSON (checkpoints, Tune, MLflow), where a date object cannot go."""


TextLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=TextLoader)


def _one_slot(template: str | None) -> str | None:
    """A prompt template holds exactly one '{}', for the class name."""
    if template is not None and template.count("{}") != 1:
        raise ValueError(f"must hold exactly one '{{}}' for the class name, got {template!r}")
    return template


Template = Annotated[str | None, AfterValidator(_one_slot)]


class _Strict(BaseModel):
    # inf and nan are no value a run can use (alpha inf puts all data on one client, lr nan trains nothing)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(_Strict):
    # A source URI: hf:<name>[?...], csv:<path>[?...], tsv:<path>[?...], sklearn:digits,
    # synthetic:topics[?...]. See fedcore/data/sources.py for the query parameters.
    source: str = "synthetic:topics"
    # Optional separate test source; without it the source's own test split is used, or a
    # stratified split of the training pool (test_fraction) when the source has none.
    test_source: str | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    max_len: int = Field(64, ge=4, le=4096)
    vocab_size: int = Field(20000, ge=10)
    # Bound the class-balanced global test set (stratified subsample); None keeps all of it.
    max_test_samples: int | None = Field(None, ge=1)
    # Use at most this many training samples (stratified subsample); None keeps all.
    max_train_samples: int | None = Field(None, ge=1)
    # Long-tailed training pool with this imbalance factor (FedPuReL's exponential profile,
    # fedcore/data/long_tail.py: class 0 the head, the last class n_max / IF); the test set stays.
    long_tail_if: float | None = Field(None, ge=1)

class PartitionConfig(_Strict):
    # domain: client k holds domain k mod D only (feature non-IID); domain_dirichlet: and Dirichlet
    # label skew with `alpha` inside each domain. Both need a source with domains.
    # pooled: FedPuReL's hierarchical partition of the training pool and test set pooled
    # (fedcore/data/partition.py: coarse label ~ Dir(alpha), class ~ Dir(fine_alpha)); each client's
    # test samples are its local test split (eval.protocol 'pooled_local')
    # classes: a class split, each client holding `classes_per_client` classes (Fed-LPFM's headline
    # partition): `class_scheme` even = every class on ceil or floor of K*k/C clients, its samples
    # split evenly among them; shards = McMahan et al.'s K*k label-sorted shards, k per client.
    # `alpha` is the Dirichlet kinds' (and pooled's) only; classes_per_client is checked against the
    # data's class count when the partition is made (1..C, and K*k >= C for even)
    kind: Literal["iid", "dirichlet", "domain", "domain_dirichlet", "pooled", "classes"] = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = Field(2, ge=1)  # classes: classes (even) or shards (shards) per client
    class_scheme: Literal["even", "shards"] = "even"  # classes: how the classes are handed out
    fine_alpha: float = Field(10.0, gt=0)  # pooled: concentration over the classes of a coarse label
    coarse: list[int] | None = None  # pooled: coarse label of each class (None: each class its own)
    num_clients: int = Field(10, ge=1)
    # Held-out fraction of each client's partition for the `local_split` protocol.
    local_test_fraction: float = Field(0.2, ge=0, lt=1)
    # The paper drops clients that receive no sample; "error" refuses such a partition.
    empty_clients: Literal["drop", "error"] = "drop"
    seed: int | None = Field(None, ge=0, lt=2**32)  # None: derived from run.seed

    @field_validator("alpha")
    @classmethod
    def _alpha_positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"must be > 0, got {v}; allowed: any positive number (Dirichlet concentration)")
        return v


class LoraConfig(_Strict):
    r: int = Field(8, ge=1)  # every client's rank when rank_profile is homogeneous
    alpha: float = Field(16, gt=0)  # scaling alpha / r_k, whatever the client's rank
    dropout: float = Field(0.1, ge=0, lt=1)
    # None: peft's default target modules for the architecture (query/value for BERT,
    # q_lin/v_lin for DistilBERT).
    target_modules: list[str] | None = None
    # Heterogeneous ranks: clients get rank_levels in the profile's fractions (uniform,
    # heavy_tail_light = most clients small, heavy_tail_strong = most clients large; FlexLoRA's
    # resource distributions over 5 levels), or one rank per client from `ranks`.
    rank_profile: Literal["homogeneous", "uniform", "heavy_tail_light", "heavy_tail_strong"] = "homogeneous"
    rank_levels: list[int] = Field(default_factory=lambda: [64, 32, 16, 8, 4])
    ranks: list[int] | None = None

    @field_validator("rank_levels", "ranks")
    @classmethod
    def _positive_ranks(cls, v):
        if v is not None and (not v or min(v) < 1):
            raise ValueError(f"ranks must be a non-empty list of integers >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _profile_levels(self) -> "LoraConfig":
        if self.rank_profile.startswith("heavy_tail") and self.ranks is None and len(self.rank_levels) != 5:
            raise ValueError(f"rank_profile {self.rank_profile!r} has fractions for 5 rank_levels, got "
                             f"{len(self.rank_levels)}; use 'uniform' or an explicit `ranks` list")
        return self

    @property
    def heterogeneous(self) -> bool:
        """Whether clients can get different ranks (a profile over one level, or a list of equal
        ranks, gives every client the same one)."""
        if self.ranks is not None:
            return len(set(self.ranks)) > 1
        return self.rank_profile != "homogeneous" and len(set(self.rank_levels)) > 1

    def describe_ranks(self) -> str:
        if self.ranks is not None:
            return f"ranks {self.ranks}"
        return f"rank_profile {self.rank_profile!r} over rank_levels {self.rank_levels}"

    @property
    def resident_rank(self) -> int:
        """The rank the model is built with: the largest any client can hold."""
        if self.ranks is not None:
            return max(self.ranks)
        return self.r if self.rank_profile == "homogeneous" else max(self.rank_levels)


class ModelConfig(_Strict):
    # textcnn | mlp | minilm-l6 | tiny-bert | tiny-distilbert | tiny-vit | tiny-mixer | tiny-clip |
    # timm:<name> | clip:<arch>/<tag> | any hub id (online)
    name: str = "textcnn"
    # lora: LoRA adapters + head trainable; full: every weight trainable; head: only the head.
    # None picks the model's natural default: lora for transformers, full for textcnn/mlp.
    tuning: Literal["lora", "full", "head"] | None = None
    # pretrained weights (where the model has them) or random initialisation
    init: Literal["pretrained", "random"] = "pretrained"
    # linear: a trained classification head. zero_shot: the encoder's own zero-shot head, scale *
    # cos(E(x), E(prompt of class c)) with the prompt embeddings fixed (fedcore/models/zero_shot.py),
    # so that the untrained model is the zero-shot model (FedPuReL's balanced prior)
    head: Literal["linear", "zero_shot"] = "linear"
    # zero_shot: the class prompt template (None: "This text is about {}."; "a photo of a {}." for CLIP)
    prompt: Template = None
    logit_scale: float = Field(100.0, gt=0)  # zero_shot: CLIP's exp(logit_scale)
    lora: LoraConfig = LoraConfig()
    # TextCNN (Kim 2014; defaults give the paper's ~2.7M parameters with a 20k vocabulary)
    embed_dim: int = Field(128, ge=1)
    num_filters: int = Field(100, ge=1)
    kernel_sizes: list[int] = [3, 4, 5]
    dropout: float = Field(0.5, ge=0, lt=1)
    hidden: int = Field(128, ge=1)  # MLP width
    # transformers: hidden and attention dropout of the encoder (None: the checkpoint's own, 0.1 for BERT)
    encoder_dropout: float | None = Field(None, ge=0, lt=1)


class TeacherConfig(_Strict):
    """A frozen zero-shot foundation model (fedcore/models/zero_shot.py): the teacher of distillation
    methods, and the zero-shot baseline row (teacher_acc) of every run that names one."""
    name: str = "minilm-l6"  # a text encoder (minilm-l6, tiny-bert, a hub id) or CLIP (tiny-clip, clip:<arch>/<tag>)
    template: Template = None  # None: "This text is about {}." for text, "a photo of a {}." for CLIP
    scale: float = Field(100.0, gt=0)  # logit scale on the cosine similarities (CLIP's exp(logit_scale))
    max_len: int = Field(64, ge=4, le=4096)  # text teachers: tokens per text
    # Fed-LPFM's two teacher ablations, both off by default (one zero-shot `name` on every client).
    # per_client: client k's teacher is drawn (seeded by the partition seed, uniformly, with
    # replacement) from these names; the rows of client k's training data carry its logits.
    per_client: list[str] | None = None
    # finetune_epochs > 0: each client fine-tunes its teacher's head (the class prompt embeddings; the
    # backbone frozen, on its cached normalised embeddings) on its own local training data, Adam at
    # finetune_lr in batches of 32, and distils from the fine-tuned head (fedcore/teacher.py).
    # Either way the zero-shot row (teacher_acc, teacher_*, tkl_to_zero_shot) stays the zero-shot head
    # of `name` on the test sets: the prior the run is set against.
    finetune_epochs: int = Field(0, ge=0, le=1000)
    finetune_lr: float = Field(1e-3, gt=0)

    @field_validator("per_client")
    @classmethod
    def _some_teachers(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("must name at least one teacher, got []; allowed: a list of zero-shot heads such as "
                             "['minilm-l6', 'tiny-bert'], or null (the one teacher `name` on every client)")
        return v

    @property
    def per_client_heads(self) -> bool:
        """Whether clients distil from their own teachers rather than one shared zero-shot head."""
        return self.per_client is not None or self.finetune_epochs > 0



class OptimizerConfig(_Strict):
    name: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class MethodConfig(_Strict):
    name: str = "fedavg"
    params: dict[str, Any] = {}  # checked by the method's own Params (fedcore/resolve.py)


class EvalConfig(_Strict):
    # pooled_local: the test samples a `pooled` partition gave each client
    protocol: Literal["local_split", "class_filtered", "pooled_local"] = "local_split"
    every: int = Field(1, ge=1)  # evaluate every N rounds (and always at the last round)
    max_samples_per_client: int | None = Field(None, ge=1)
    batch_size: int = Field(256, ge=1)
    # many/medium/few groups by global training count per class: > many_min is Many,
    # few_max < n <= many_min is Medium, <= few_max is Few.
    many_min: int = 100
    few_max: int = 20


class RunConfig(_Strict):
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    eval: EvalConfig = EvalConfig()
    teacher: TeacherConfig | None = None  # None: none, unless the method distils one (then the default)
    rounds: int = Field(10, ge=1)
    clients_per_round: int | None = Field(None, ge=1)  # None: every client, every round
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    max_local_steps: int | None = Field(None, ge=1)  # cap on optimizer steps per client-round
    seed: int = Field(0, ge=0, lt=2**32)
    device: str = "cpu"
    torch_threads: int | None = Field(None, ge=1)
    # how a cohort's local updates run (fedcore/executors/): one client after another on the resident
    # model, or (LoRA with the plain local update) every client's adapter over the frozen base in one
    # pass; auto measures both once per model, device and batch shape (cached) and takes the faster.
    # Pin it for bit-for-bit reproducibility across machines: the two differ in rounding and dropout masks
    executor: Literal["auto", "sequential", "batched"] = "auto"
    executor_clients: int | None = Field(None, ge=1)  # batched: at most this many clients per pass
    # bf16: forward passes (training and evaluation) under torch.autocast in bfloat16; the weights,
    # their gradients, the optimizer and the aggregation stay float32 (bf16 has float32's range, so no
    # loss scaling). For GPUs with bf16 tensor cores; on a CPU it is usually slower
    precision: Literal["fp32", "bf16"] = "fp32"
    cache_dir: str | None = None  # tokenized-tensor cache; None: $FEDCORE_CACHE or ~/.cache/fedcore

    @field_validator("device")
    @classmethod
    def _device_exists(cls, v: str) -> str:
        import torch

        try:
            dev = torch.device(v)
        except RuntimeError:
            raise ValueError(f"unknown device {v!r}; allowed: cpu, cuda, cuda:<index>") from None
        if dev.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0 or (dev.index or 0) >= count:
                raise ValueError(f"{v!r} is not available here ({count} CUDA devices); allowed: cpu"
                                 + (f", cuda:0..cuda:{count - 1}" if count else ""))
        elif dev.type != "cpu":
            raise ValueError(f"device type {dev.type!r} is not supported; allowed: cpu, cuda")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        if self.precision == "bf16" and self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_bf16_supported():
                raise ValueError(f"precision: bf16 on {torch.cuda.get_device_name(self.device)}, which has no bfloat16 "
                                 f"support; allowed: fp32")
        pooled_kind, pooled_protocol = self.partition.kind == "pooled", self.eval.protocol == "pooled_local"
        if pooled_kind and not pooled_protocol and "protocol" not in self.eval.model_fields_set:
            # the partition's own test splits (a copy: the default EvalConfig instance is shared)
            object.__setattr__(self, "eval", self.eval.model_copy(update={"protocol": "pooled_local"}))
        elif pooled_kind != pooled_protocol:
            raise ValueError(f"eval.protocol: {self.eval.protocol!r} with partition.kind {self.partition.kind!r}; "
                             f"allowed: 'pooled_local' exactly when partition.kind is 'pooled'")
        if self.eval.protocol == "local_split" and self.partition.local_test_fraction == 0:
            raise ValueError(
                "partition.local_test_fraction: 0 leaves every client without a test split under "
                "eval.protocol 'local_split'; allowed: 0 < fraction < 1, or eval.protocol 'class_filtered'"
            )
        n = self.partition.num_clients
        if self.clients_per_round is not None and self.clients_per_round > n:
            raise ValueError(
                f"clients_per_round: {self.clients_per_round} is more than partition.num_clients "
                f"({n}); allowed: 1..{n}"
            )
        return self

    @property
    def partition_seed(self) -> int:
        return self.seed if self.partition.seed is None else self.partition.seed

    def fingerprint(self) -> str:
        """Stable hash of what a round computes (used to refuse restoring another run's state).

        Leaves out the round budget (a run may be extended) and where it runs (threads, device,
        cache), which do not change what a round computes.
        """
        blob = json.dumps(self.model_dump(mode="json", exclude={"rounds", "device", "torch_threads", "cache_dir"}),
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def error_line(loc: str, msg: str, value: Any = None) -> str:
    """One problem as its line: 'field: what is wrong (got value)'. A message that already names its
    field (a cross-field check) keeps its own; the value is added where the message lacks it."""
    line = msg if re.match(r"^[\w.]+: ", msg) else f"{loc}: {msg}"
    if not isinstance(value, (dict, list, type(None))) and str(value) not in line:
        line += f" (got {value!r})"
    return line


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_field(e["loc"])
        lines.append(error_line(".".join(str(p) for p in e["loc"]), msg, e.get("input")))
    return "invalid config: " + "; ".join(lines)


def _unknown_field(loc: tuple) -> str:
    """'unknown field' with the section's field names and the closest match."""
    import difflib

    section: type[BaseModel] | None = RunConfig
    for part in loc[:-1]:
        ann = section.model_fields[str(part)].annotation if section and str(part) in section.model_fields else None
        section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    names = list(section.model_fields) if section else []
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field{hint}; allowed: {', '.join(names)}"


def parse_config(data: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """A RunConfig from a nested dict plus dotted overrides, checked against this schema only (types,
    ranges, fields that must agree), raising ConfigError. What needs the registries (a source's
    URI, a model's or method's name, defaults that depend on the model) is fedcore.resolve's: use
    its make_config."""
    merged: dict[str, Any] = json.loads(json.dumps(data or {}))
    for key, value in overrides.items():
        set_dotted(merged, key, value)
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.replace("__", ".").split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def read_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """parse_config of a YAML config file (optional) with dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file: {str(p)!r} does not exist")
        try:
            loaded = yaml_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file: {str(p)!r} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file: {str(p)!r} must hold a mapping at the top level")
        data = loaded
    return parse_config(data, **(overrides or {}))


def parse_assignments(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` items -> {dotted key: value}, each value read as YAML (0.1, true, [4, 8], null)
    and kept as the plain string where it is not YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE (a dotted config field), got {item!r}")
        try:
            out[key.strip()] = yaml_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value  # e.g. an unbalanced bracket: the plain string
    return out
