"""How a cohort's local updates run. Sequential: one resident model; for each client the server's
state is copied into it, trained, and the trained tensors handed over as its update. Batched
(fedcore/batched.py): a LoRA cohort in one pass over the frozen base. `choose_executor` picks one
(run.executor: auto measures both once per model, device and batch shape, and caches the choice)."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from fedcore.local import train_local
from fedcore.methods.base import ClientUpdate, LocalContext, client_key, client_state
from fedcore.seeds import derive_seed  # noqa: F401  (re-exported: callers import it from here)


@torch.no_grad()
def zero_beyond_rank(params: list[tuple[str, torch.nn.Parameter]], rank: int) -> None:
    """Zero LoRA factors past `rank` (rows of A, columns of B): a rank-r client in an r_max model.
    Zeros on both sides get zero gradients, so they stay zero through SGD and Adam steps."""
    for name, p in params:
        if "lora_A." in name:
            p[rank:] = 0
        elif "lora_B." in name:
            p[:, rank:] = 0


@torch.no_grad()
def lower_rank(params: list[tuple[str, torch.nn.Parameter]], old: int, new: int) -> None:
    """A client whose method lowered its rank from `old` to `new` (HetLoRA's pruning): its scale rises
    from alpha / old to alpha / new, so B is multiplied by new / old (its kept slots' product keeps
    its value) and the slots from `new` on are zeroed."""
    for name, p in params:
        if "lora_B." in name:
            p.mul_(new / old)
    zero_beyond_rank(params, new)


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


@torch.no_grad()
def load_fresh(params: list[tuple[str, torch.nn.Parameter]], state: dict[str, torch.Tensor]) -> None:
    """Point each parameter at a new copy of its state: one copy, after which the trained tensors can
    be handed over as a client's update without cloning them."""
    for name, p in params:
        p.data = state[name].to(p.device, p.dtype, copy=True)


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
            load_fresh(fed.params, start)
            if rank is not None:
                zero_beyond_rank(fed.params, rank)
                set_lora_scaling(fed.model, fed.cfg.model.lora.alpha / rank)
            seed = derive_seed(cfg.seed, round_, k, 1)
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
            seed = derive_seed(cfg.seed, round_, k, 4)
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


def choose_executor(fed):
    """(executor, why): the configured one, or with `auto` the faster of sequential and batched for this
    model, device and batch shape (measured once, cached in the tensor cache directory)."""
    from fedcore.batched import BatchedLoRAExecutor, refusal, time_step
    from fedcore.data.tokenize import cache_dir

    cfg = fed.cfg
    if cfg.executor == "sequential":
        return SequentialExecutor(), "configured"
    if cfg.executor == "batched":
        return BatchedLoRAExecutor(fed), "configured"
    reason = refusal(fed)
    if reason is not None:
        return SequentialExecutor(), f"auto: batched does not apply ({reason})"
    cohort = cfg.clients_per_round or fed.data.num_clients
    clients = list(range(min(cohort, cfg.executor_clients or cohort, fed.data.num_clients)))
    device = torch.cuda.get_device_name(torch.device(cfg.device)) if cfg.device.startswith("cuda") else "cpu"
    lcfg = cfg.model.lora
    key = "|".join(map(str, (cfg.model.name, cfg.model.head, lcfg.resident_rank, cfg.device, device, cfg.batch_size,
                             len(clients), cfg.data.max_len, lcfg.rank_profile, lcfg.ranks, torch.__version__,
                             torch.get_num_threads(), cfg.precision)))
    path = cache_dir(cfg.cache_dir) / "executor_choice.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = time_step(fed, "batched", clients) / time_step(fed, "sequential", clients)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, path)
    ratio = known[key]
    why = f"auto: one pass of {len(clients)} clients took {ratio:.2f}x the time of their sequential steps on {cfg.device}"
    return (BatchedLoRAExecutor(fed) if ratio < 0.95 else SequentialExecutor()), why
