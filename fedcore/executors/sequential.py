"""The sequential executor: one resident model; for each client the server's state is copied into
it, trained, and the trained tensors handed over as its update."""
from __future__ import annotations

import numpy as np
import torch

from fedcore.assembly import Resident
from fedcore.config import OptimizerConfig
from fedcore.evaluation import Evaluator
from fedcore.local import train_local
from fedcore.methods.base import ClientPlan, ClientUpdate, LocalContext, ServerState, State
from fedcore.params import load_fresh, load_state, lower_rank, set_lora_scaling, zero_beyond_rank
from fedcore.seeds import Purpose, derive_seed


class SequentialExecutor:
    name = "sequential"

    def run(self, res: Resident, plan: list[ClientPlan], round_: int, server_state: ServerState) -> list[ClientUpdate]:
        cfg, method, data = res.cfg, res.method, res.data
        updates = []
        for p in plan:
            k, rank, start = p.client, p.rank, p.start_state()
            load_fresh(res.params, start)
            if rank is not None:
                zero_beyond_rank(res.params, rank)
                set_lora_scaling(res.model, p.scale)
            seed = derive_seed(cfg.seed, round_, k, Purpose.LOCAL_TRAINING)
            torch.manual_seed(seed)  # dropout and any other global-RNG draw
            gen = torch.Generator().manual_seed(seed)
            idx = data.client_train[k]
            ctx = LocalContext(round=round_, client=k, num_samples=len(idx), params=res.params, start_state=start,
                               rank=rank, server=server_state, model=res.model)
            stats = train_local(res.model, method, ctx, data.train_inputs, data.train_labels, idx,
                                epochs=cfg.local_epochs, batch_size=cfg.batch_size, ocfg=cfg.optimizer,
                                generator=gen, device=cfg.device, max_steps=cfg.max_local_steps,
                                precision=cfg.precision)
            method.on_local_end(ctx)
            old = [key for key in ctx.report if key.startswith("metric/")]
            if old:  # the engine's earlier convention; say so rather than drop the figure
                raise ValueError(f"method {method.name!r} puts {old[0]!r} in ctx.report; a figure for the round's "
                                 f"metrics goes in ctx.reported under its bare name (docs/plugins.md)")
            stats.update(ctx.report)
            if ctx.rank is not None and rank is not None and ctx.rank < rank:
                lower_rank(res.params, rank, ctx.rank)
            elif ctx.rank is not None:
                zero_beyond_rank(res.params, ctx.rank)
            # the trained tensors themselves become the update (the next client gets fresh storage)
            updates.append(ClientUpdate(k, len(idx), {n: q.detach() for n, q in res.params}, stats, ctx.rank,
                                        dict(ctx.reported)))
        load_fresh(res.params, {n: q.detach() for n, q in res.params})  # the last update no longer aliases the model
        if res.lora:
            set_lora_scaling(res.model, cfg.model.lora.alpha / cfg.model.lora.resident_rank)
        return updates

    def personalize(self, res: Resident, evaluator: Evaluator, global_state: State, server_state: ServerState,
                    initial_state: State, cohort: list[int], round_: int) -> dict[int, State]:
        """Stage 2 of a personalizing method (its `personal_stage`): each cohort client's private branch
        (its own values of the trainable tensors, on the same frozen base) trained on top of the frozen
        global branch. Returns each cohort client's new held tensors (ServerState.held)."""
        cfg, data, method = res.cfg, res.data, res.method
        names = res.names()
        stage = method.personal_stage()
        # the global branch is frozen: its logits on each client's rows, once, in eval mode
        load_state(res.params, global_state)
        global_logits = {k: evaluator.logits(data.train_inputs, data.client_train[k]) for k in cohort}
        ocfg = OptimizerConfig(name="sgd", lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
        held: dict[int, State] = {}
        for k in cohort:
            idx = torch.as_tensor(data.client_train[k], dtype=torch.long)
            rows = {key: v[idx] for key, v in data.train_inputs.items()}
            rows["global_logits"] = global_logits[k]
            load_state(res.params, server_state.held_state(k, names, initial_state))
            seed = derive_seed(cfg.seed, round_, k, Purpose.PERSONALIZE)
            torch.manual_seed(seed)
            ctx = LocalContext(round=round_, client=k, num_samples=len(idx), params=res.params,
                               start_state=global_state, server=server_state, model=res.model)
            train_local(res.model, PrivateBranch(method), ctx, rows, data.train_labels[idx], np.arange(len(idx)),
                        epochs=stage.epochs, batch_size=cfg.batch_size, ocfg=ocfg,
                        generator=torch.Generator().manual_seed(seed), device=cfg.device,
                        max_steps=cfg.max_local_steps, precision=cfg.precision)
            held[k] = {n: p.detach().clone() for n, p in res.params}
        load_state(res.params, global_state)
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
