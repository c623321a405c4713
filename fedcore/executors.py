"""How a cohort's local updates run. Sequential: one resident model; for each client the
server's state is copied into it in place, trained, and the trainable tensors copied out.
(A batched executor for LoRA cohorts comes with the benchmarks issue.)"""
from __future__ import annotations

import numpy as np
import torch

from fedcore.local import train_local
from fedcore.methods.base import ClientUpdate, LocalContext


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (trial seed, round, client, purpose), stable across runs."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@torch.no_grad()
def zero_beyond_rank(params: list[tuple[str, torch.nn.Parameter]], rank: int) -> None:
    """Zero LoRA factors past `rank` (rows of A, columns of B): a rank-r client in an r_max model.
    Zeros on both sides get zero gradients, so they stay zero through SGD and Adam steps."""
    for name, p in params:
        if "lora_A." in name:
            p[rank:] = 0
        elif "lora_B." in name:
            p[:, rank:] = 0


def set_lora_scaling(model: torch.nn.Module, value: float) -> None:
    """peft's per-layer scaling (alpha / r): set to the training client's alpha / r_k."""
    for m in model.modules():
        if isinstance(getattr(m, "scaling", None), dict) and hasattr(m, "lora_A"):
            for adapter in m.scaling:
                m.scaling[adapter] = value


@torch.no_grad()
def load_state(params: list[tuple[str, torch.nn.Parameter]], state: dict[str, torch.Tensor]) -> None:
    for name, p in params:
        p.copy_(state[name])


def snapshot(params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params}


class SequentialExecutor:
    name = "sequential"

    def run(self, fed, cohort: list[int], round_: int) -> list[ClientUpdate]:
        cfg = fed.cfg
        updates = []
        ranks = fed.server_state.get("ranks")
        for k in cohort:
            rank = int(ranks[k]) if ranks is not None else None
            start = fed.method.client_start_state(fed.global_state, fed.server_state, k)
            load_state(fed.params, start)
            if rank is not None:
                zero_beyond_rank(fed.params, rank)
                set_lora_scaling(fed.model, fed.cfg.model.lora.alpha / rank)
            seed = derive_seed(cfg.seed, round_, k, 1)
            torch.manual_seed(seed)  # dropout and any other global-RNG draw
            gen = torch.Generator().manual_seed(seed)
            idx = fed.data.client_train[k]
            ctx = LocalContext(round=round_, client=k, num_samples=len(idx), params=fed.params, start_state=start,
                               rank=rank, server=fed.server_state)
            stats = train_local(fed.model, fed.method, ctx, fed.data.train_inputs, fed.data.train_labels, idx,
                                epochs=cfg.local_epochs, batch_size=cfg.batch_size, ocfg=cfg.optimizer,
                                generator=gen, device=cfg.device, max_steps=cfg.max_local_steps)
            fed.method.on_local_end(ctx)
            stats.update(ctx.report)
            if ctx.rank is not None:
                zero_beyond_rank(fed.params, ctx.rank)
            updates.append(ClientUpdate(k, len(idx), snapshot(fed.params), stats, ctx.rank))
        if ranks is not None:
            set_lora_scaling(fed.model, fed.cfg.model.lora.alpha / fed.cfg.model.lora.resident_rank)
        return updates
