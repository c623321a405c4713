"""The sequential executor: one resident model; for each client the server's state is copied into
it, trained, and the trained tensors handed over as its update."""
from __future__ import annotations

import numpy as np
import torch

from fedcore.local import train_local
from fedcore.methods.base import ClientUpdate, LocalContext, client_key, client_state
from fedcore.params import load_fresh, load_state, lower_rank, set_lora_scaling, zero_beyond_rank
from fedcore.seeds import Purpose, derive_seed


class SequentialExecutor:
    name = "sequential"

    def run(self, fed, cohort: list[int], round_: int) -> list[ClientUpdate]:
        cfg = fed.cfg
        updates = []
        ranks = fed.server_state.get("ranks")
        for k in cohort:
            rank = int(ranks[k]) if ranks is not None else None
            start = fed.method.client_start_state(fed.global_state, fed.server_state, k)
            load_fresh(fed.params, start)
            if rank is not None:
                zero_beyond_rank(fed.params, rank)
                set_lora_scaling(fed.model, fed.cfg.model.lora.alpha / rank)
            seed = derive_seed(cfg.seed, round_, k, Purpose.LOCAL_TRAINING)
            torch.manual_seed(seed)  # dropout and any other global-RNG draw
            gen = torch.Generator().manual_seed(seed)
            idx = fed.data.client_train[k]
            ctx = LocalContext(round=round_, client=k, num_samples=len(idx), params=fed.params, start_state=start,
                               rank=rank, server=fed.server_state, model=fed.model)
            stats = train_local(fed.model, fed.method, ctx, fed.data.train_inputs, fed.data.train_labels, idx,
                                epochs=cfg.local_epochs, batch_size=cfg.batch_size, ocfg=cfg.optimizer,
                                generator=gen, device=cfg.device, max_steps=cfg.max_local_steps,
                                precision=cfg.precision)
            fed.method.on_local_end(ctx)
            stats.update(ctx.report)
            if ctx.rank is not None and rank is not None and ctx.rank < rank:
                lower_rank(fed.params, rank, ctx.rank)
            elif ctx.rank is not None:
                zero_beyond_rank(fed.params, ctx.rank)
            # the trained tensors themselves become the update (the next client gets fresh storage)
            updates.append(ClientUpdate(k, len(idx), {n: p.detach() for n, p in fed.params}, stats, ctx.rank))
        load_fresh(fed.params, {n: p.detach() for n, p in fed.params})  # the last update no longer aliases the model
        if ranks is not None:
            set_lora_scaling(fed.model, fed.cfg.model.lora.alpha / fed.cfg.model.lora.resident_rank)
        return updates

    def personalize(self, fed, cohort: list[int], round_: int) -> dict[str, torch.Tensor]:
        """Stage 2 of a personalizing method: each cohort client's private branch (its own values of
        the trainable tensors, on the same frozen base) trained on top of the frozen global branch.
        Returns the updated client-held tensors (server-state keys client/<k>/<name>)."""
        from fedcore.config import OptimizerConfig

        cfg, data, method = fed.cfg, fed.data, fed.method
        names = [n for n, _ in fed.params]
        # the global branch is frozen: its logits on each client's rows, once, in eval mode
        load_state(fed.params, fed.global_state)
        global_logits = {k: fed.logits(data.train_inputs, data.client_train[k]) for k in cohort}
        ocfg = OptimizerConfig(name="sgd", lr=method.params.personal_lr, momentum=0.0, weight_decay=0.0)
        held: dict[str, torch.Tensor] = {}
        for k in cohort:
            idx = torch.as_tensor(data.client_train[k], dtype=torch.long)
            rows = {key: v[idx] for key, v in data.train_inputs.items()}
            rows["global_logits"] = global_logits[k]
            load_state(fed.params, client_state(fed.server_state, k, names, fed.initial_state))
            seed = derive_seed(cfg.seed, round_, k, Purpose.PERSONALIZE)
            torch.manual_seed(seed)
            ctx = LocalContext(round=round_, client=k, num_samples=len(idx), params=fed.params,
                               start_state=fed.global_state, server=fed.server_state, model=fed.model)
            train_local(fed.model, PrivateBranch(method), ctx, rows, data.train_labels[idx], np.arange(len(idx)),
                        epochs=method.params.personal_epochs, batch_size=cfg.batch_size, ocfg=ocfg,
                        generator=torch.Generator().manual_seed(seed), device=cfg.device,
                        max_steps=cfg.max_local_steps, precision=cfg.precision)
            held.update({client_key(k, n): p.detach().clone() for n, p in fed.params})
        load_state(fed.params, fed.global_state)
        return held


class PrivateBranch:
    """The local-loop hooks of stage 2: the method's personal loss on the batch's frozen global logits."""

    def __init__(self, method):
        self.method = method

    def on_local_start(self, ctx: LocalContext) -> None:
        pass

    def local_loss(self, logits: torch.Tensor, labels: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        return self.method.personal_loss(ctx.batch["global_logits"], logits, labels)

    def after_backward(self, ctx: LocalContext) -> None:
        pass

    def trains_locally(self, name: str) -> bool:
        return True
