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
        for k in cohort:
            start = fed.method.client_start_state(fed.global_state, fed.server_state, k)
            load_state(fed.params, start)
            seed = derive_seed(cfg.seed, round_, k, 1)
            torch.manual_seed(seed)  # dropout and any other global-RNG draw
            gen = torch.Generator().manual_seed(seed)
            idx = fed.data.client_train[k]
            ctx = LocalContext(round=round_, client=k, num_samples=len(idx), params=fed.params, start_state=start)
            stats = train_local(fed.model, fed.method, ctx, fed.data.train_inputs, fed.data.train_labels, idx,
                                epochs=cfg.local_epochs, batch_size=cfg.batch_size, ocfg=cfg.optimizer,
                                generator=gen, device=cfg.device, max_steps=cfg.max_local_steps)
            updates.append(ClientUpdate(k, len(idx), snapshot(fed.params), stats))
        return updates
