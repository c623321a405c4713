"""Assembling a run from its config: its data (with the teacher's logits where the config has a
teacher), its method, and the one resident model with the tensors its clients train (`Resident`).
The round loop, the executors and the evaluator work on what this builds."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedcore.config import RunConfig
from fedcore.resolve import resolve
from fedcore.data import FederatedData, load_federated, read_pool
from fedcore.local import make_optimizer
from fedcore.methods import Method, get_method
from fedcore.models import build_model, is_transformer
from fedcore.seeds import Purpose, derive_seed
from fedcore.teacher import attach_teacher

Params = list[tuple[str, torch.nn.Parameter]]


@dataclass
class Resident:
    """The one resident model of a run and what training and scoring it needs."""
    cfg: RunConfig
    data: FederatedData
    method: Method
    model: torch.nn.Module
    params: Params  # what clients train and the server aggregates, in the model's order
    lora: bool  # a transformer with LoRA adapters: clients hold ranks, scales alpha / r_k

    def names(self) -> list[str]:
        return [n for n, _ in self.params]


def load_data(cfg: RunConfig) -> FederatedData:
    """The run's federated data: the data layer's tensors, then the teacher's logits over them."""
    pool = read_pool(cfg)
    data = load_federated(cfg, pool)
    if cfg.teacher is not None:
        attach_teacher(cfg, pool, data)
    return data


def running_stats(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, buffer) of the running mean and variance of every batch-norm layer with trainable weights."""
    out = []
    for prefix, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats \
                and any(p.requires_grad for p in m.parameters(recurse=False)):
            out += [(f"{prefix}.{b}" if prefix else b, getattr(m, b)) for b in ("running_mean", "running_var")]
    return out


def assemble(cfg: RunConfig, data: FederatedData | None = None) -> Resident:
    cfg = resolve(cfg)  # a RunConfig made without fedcore.resolve (its defaults that need the registries unset)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    data = data if data is not None else load_data(cfg)
    method = get_method(cfg.method.name, cfg.method.params)
    method.seed = cfg.seed
    torch.manual_seed(derive_seed(cfg.seed, 0, 0, Purpose.MODEL_INIT))
    model = method.build_model(lambda: build_model(cfg.model, data.num_classes, data.vocab_size, data.in_features,
                                                   data.class_names)).to(cfg.device)
    # what clients train and the server aggregates: the trainable parameters, and the running
    # statistics of normalisation layers whose weights train (BatchNorm's mean and variance
    # travel with its weights, as in FedAvg of the full model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad] + running_stats(model)
    # torch's first optimizer imports torch._dynamo (~2 s once per process): pay it here, not
    # in round 1's timing
    make_optimizer(cfg.optimizer, [torch.zeros(1, requires_grad=True)])
    lora = cfg.model.tuning == "lora" and is_transformer(cfg.model.name)
    if lora:
        method.lora_alpha = cfg.model.lora.alpha
    return Resident(cfg, data, method, model, params, lora)
