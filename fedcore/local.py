"""The one local-training loop. Methods plug in through LocalContext hooks:
on_local_start, local_loss, after_backward (see methods/base.py)."""
from __future__ import annotations

import numpy as np
import torch

from fedcore.data import take
from fedcore.methods.base import LocalContext, Method
from fedcore.sparse_rows import RowSparseSGD, row_sparse_embeddings


class DivergedError(FloatingPointError):
    """The training loss became NaN or inf."""


def autocast(precision: str, device: str):
    """The forward passes' precision context: bfloat16 autocast for "bf16", nothing for "fp32"."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_optimizer(ocfg, params: list[torch.nn.Parameter], model: torch.nn.Module | None = None):
    """The client's optimizer. With `model` given, plain SGD (no weight decay) moves its embedding
    tables row-sparsely (fedcore/sparse_rows.py): the same update, bit for bit, at a fraction of the
    memory traffic; pass a model only when nothing else reads or changes the gradients."""
    # foreach: one multi-tensor call per update instead of a Python loop over parameters; the same
    # arithmetic, bit for bit (tests/test_speed.py), also on the CPU where torch defaults to the loop
    if ocfg.name == "sgd" and model is not None and ocfg.weight_decay == 0:
        # CPU only: on CUDA index_add_ accumulates with atomics, in no fixed order
        tables = [e for e in row_sparse_embeddings(model)
                  if e.weight.device.type == "cpu" and any(e.weight is p for p in params)]
        if tables:
            dense = [p for p in params if not any(e.weight is p for e in tables)]
            opt = torch.optim.SGD(dense or [torch.zeros(1, requires_grad=True)], lr=ocfg.lr, momentum=ocfg.momentum,
                                  foreach=True)
            return RowSparseSGD(opt, tables, ocfg.lr, ocfg.momentum)
    if ocfg.name == "sgd":
        return torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.momentum, weight_decay=ocfg.weight_decay,
                               foreach=True)
    if ocfg.name == "adamw":
        return torch.optim.AdamW(params, lr=ocfg.lr, weight_decay=ocfg.weight_decay, foreach=True)
    return torch.optim.Adam(params, lr=ocfg.lr, weight_decay=ocfg.weight_decay, foreach=True)


def train_local(model: torch.nn.Module, method: Method, ctx: LocalContext, inputs: dict[str, torch.Tensor],
                labels: torch.Tensor, idx: np.ndarray, *, epochs: int, batch_size: int, ocfg,
                generator: torch.Generator, device: str = "cpu", max_steps: int | None = None,
                precision: str = "fp32") -> dict[str, float]:
    """Train `model` in place on rows `idx` of the pool; returns the mean loss and step count.

    The optimizer is fresh for every client and round (as in the papers' code: no optimizer state
    crosses clients).
    """
    model.train()
    # row-sparse embedding updates only where no hook reads or changes gradients after backward
    plain = type(method).after_backward is Method.after_backward
    opt = make_optimizer(ocfg, [p for _, p in ctx.params if p.requires_grad], model if plain else None)
    try:
        return _steps(model, method, ctx, opt, inputs, labels, idx, epochs, batch_size, generator, device, max_steps,
                      precision)
    finally:
        if isinstance(opt, RowSparseSGD):
            opt.close()


def _steps(model, method, ctx, opt, inputs, labels, idx, epochs, batch_size, generator, device, max_steps, precision):
    fixed = [p for name, p in ctx.params if not method.trains_locally(name)]
    method.on_local_start(ctx)
    idx_t = torch.as_tensor(idx, dtype=torch.long)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    steps = 0
    for _ in range(epochs):
        order = idx_t[torch.randperm(len(idx_t), generator=generator)]
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = {k: v.to(device, non_blocking=True) for k, v in take(inputs, rows).items()}
            y = labels[rows].to(device, non_blocking=True)
            ctx.batch = batch  # methods that need more than logits and labels (a teacher's logits)
            with autocast(precision, device):
                loss = method.local_loss(model(batch), y, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for p in fixed:
                p.grad = None  # the optimizer skips it: no step, no weight decay
            method.after_backward(ctx)
            opt.step()
            loss_sum += loss.detach().to(torch.float64)
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        if max_steps is not None and steps >= max_steps:
            break
    mean_loss = float(loss_sum) / max(steps, 1)
    if not np.isfinite(mean_loss):  # checked once per client: no per-step host sync
        raise DivergedError(f"training loss became {mean_loss} on client {ctx.client} in round {ctx.round}")
    return {"train_loss": mean_loss, "steps": float(steps)}
