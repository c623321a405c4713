"""A cohort of LoRA clients in one pass: every client's adapter over one frozen base.

The samples of all the cohort's clients go through the frozen base together, one forward and one
backward per step; inside each peft LoRA layer (and each trainable head) a sample is routed to its
own client's factors. The loss is the sum of the clients' mean cross-entropies, so each client's
tensors get exactly the gradient of its own loss, and one elementwise optimizer over all clients'
tensors steps each of them as its own optimizer would. Each client keeps its own batches (the same
shuffling as the sequential executor, seeded per client), its own rank and scale alpha / r_k; a
client with fewer steps drops out of the later steps (its tensors get no gradient and are not
stepped), and with `executor_clients` set the cohort runs in passes of clients of similar step
counts. The result equals sequential execution up to float rounding (the base's matrix products
run over a bigger batch), except for dropout, whose masks are drawn for the whole pass rather than
per client: set the dropouts to 0 for equality (tests/test_batched.py).

Only the plain local update can be batched: methods that change the local objective or the
gradients (FedProx, HetLoRA's pruning, distillation, FedPuReL's purification, FML's pair) are
refused with the reason; so are trainable modules other than LoRA factors and linear heads.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcore.data import take
from fedcore.local import DivergedError, autocast, make_optimizer
from fedcore.assembly import Resident
from fedcore.methods.base import ClientPlan, ClientUpdate, Method, ServerState, State
from fedcore.params import load_state, zero_beyond_rank
from fedcore.seeds import Purpose, derive_seed

HOOKS = ("on_local_start", "local_loss", "after_backward", "on_local_end", "build_model")


def refusal(res: Resident) -> str | None:
    """Why the batched executor cannot run this federation (None when it can)."""
    cfg, method = res.cfg, res.method
    if cfg.model.tuning != "lora" or not res.lora:
        return f"it batches LoRA adapters over a frozen base, and model.tuning is {cfg.model.tuning!r}"
    changed = [h for h in HOOKS if getattr(type(method), h) is not getattr(Method, h)]
    if changed or method.personalizes:
        return (f"method {method.name!r} changes the local update ({', '.join(changed) or 'a personal stage'}); "
                f"only the plain cross-entropy update runs batched")
    if cfg.max_local_steps is None and cfg.local_epochs < 1:
        return "no local steps"
    layers, heads = _trainable_modules(res)
    others = {n for n, _ in res.params} - {n for pair in layers.values() for n in pair} \
        - {n for own in heads.values() for n in own.values()}
    if others:
        return f"trainable tensors outside LoRA layers and linear heads ({sorted(others)[0]})"
    return None


def _trainable_modules(res: Resident) -> tuple[dict[nn.Module, tuple[str, str]], dict[nn.Module, dict[str, str]]]:
    """{peft LoRA layer: (A name, B name)} and {trainable nn.Linear head: {"weight"/"bias": name}}."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    names = {id(p): n for n, p in res.params}
    layers, heads = {}, {}
    for module in res.model.modules():
        if isinstance(module, LoraLinear) and "default" in module.lora_A:
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            if id(a) in names and id(b) in names:
                layers[module] = (names[id(a)], names[id(b)])
    factors = {n for pair in layers.values() for n in pair}
    for module in res.model.modules():
        if isinstance(module, nn.Linear):
            own = {attr: names[id(p)] for attr, p in module.named_parameters(recurse=False)
                   if id(p) in names and names[id(p)] not in factors}
            if own:
                heads[module] = own
    return layers, heads


@contextmanager
def routed(layers, heads, bounds: list[tuple[int, int]], tensors: list[dict[str, torch.Tensor]], scales: list[float]):
    """Inside: each LoRA layer adds B_k A_k x s_k, and each head applies W_k, to rows bounds[k] of its input."""
    def lora_forward(layer, a, b):
        drop = layer.lora_dropout["default"]

        def forward(x, *args, **kwargs):
            out = layer.base_layer(x, *args, **kwargs)
            delta = [F.linear(F.linear(drop(x[s:e]), t[a]), t[b]) * sc for (s, e), t, sc in zip(bounds, tensors, scales)]
            return out + torch.cat(delta)
        return forward

    def head_forward(module, own):
        def forward(x):
            return torch.cat([F.linear(x[s:e], t[own["weight"]] if "weight" in own else module.weight,
                                       t[own["bias"]] if "bias" in own else module.bias)
                              for (s, e), t in zip(bounds, tensors)])
        return forward

    patched = [(m, lora_forward(m, *names)) for m, names in layers.items()]
    patched += [(m, head_forward(m, names)) for m, names in heads.items()]
    for module, fwd in patched:
        module.forward = fwd
    try:
        yield
    finally:
        for module, _ in patched:
            del module.forward


def client_batches(idx: np.ndarray, seed: int, epochs: int, batch_size: int, max_steps: int | None) -> list[torch.Tensor]:
    """A client's batches, drawn exactly as fedcore.local.train_local draws them."""
    gen = torch.Generator().manual_seed(seed)
    idx_t = torch.as_tensor(idx, dtype=torch.long)
    out: list[torch.Tensor] = []
    for _ in range(epochs):
        order = idx_t[torch.randperm(len(idx_t), generator=gen)]
        for start in range(0, len(order), batch_size):
            out.append(order[start:start + batch_size])
            if max_steps is not None and len(out) >= max_steps:
                return out
    return out


class BatchedLoRAExecutor:
    name = "batched"

    def __init__(self, res: Resident):
        reason = refusal(res)
        if reason is not None:
            raise ValueError(f"executor: 'batched' cannot run this config: {reason}; use executor 'sequential' or 'auto'")
        self.layers, self.heads = _trainable_modules(res)

    def run(self, res: Resident, plan: list[ClientPlan], round_: int, server_state: ServerState) -> list[ClientUpdate]:
        cfg = res.cfg
        alpha, resident = cfg.model.lora.alpha, cfg.model.lora.resident_rank
        work = []
        for p in plan:
            k, rank = p.client, p.rank
            start = p.start_state()
            t = {n: start[n].to(cfg.device, copy=True).requires_grad_(res.method.trains_locally(n)) for n, _ in res.params}
            if rank is not None:
                zero_beyond_rank(list(t.items()), rank)
            idx = res.data.client_train[k]
            batches = client_batches(idx, derive_seed(cfg.seed, round_, k, Purpose.LOCAL_TRAINING), cfg.local_epochs, cfg.batch_size,
                                     cfg.max_local_steps)
            work.append({"client": k, "n": len(idx), "rank": rank, "tensors": t, "batches": batches,
                         "scale": p.scale if p.scale is not None else alpha / resident,
                         "loss": torch.zeros((), dtype=torch.float64, device=cfg.device)})
        group = cfg.executor_clients or len(work)
        ordered = sorted(work, key=lambda w: len(w["batches"]))  # similar step counts share a pass
        for i in range(0, len(ordered), group):
            self._pass(res, ordered[i:i + group], round_)
        updates = []
        for w in work:
            steps = len(w["batches"])
            mean = float(w["loss"]) / max(steps, 1)
            if not np.isfinite(mean):
                raise DivergedError(f"training loss became {mean} on client {w['client']} in round {round_}")
            state = {n: v.detach() for n, v in w["tensors"].items()}
            if w["rank"] is not None:
                zero_beyond_rank(list(state.items()), w["rank"])
            updates.append(ClientUpdate(w["client"], w["n"], state, {"train_loss": mean, "steps": float(steps)}, w["rank"]))
        return updates

    def _pass(self, res: Resident, group: list[dict], round_: int) -> None:
        cfg, data, model = res.cfg, res.data, res.model
        leaves = [t for w in group for t in w["tensors"].values() if t.requires_grad]
        opt = make_optimizer(cfg.optimizer, leaves)
        model.train()
        torch.manual_seed(derive_seed(cfg.seed, round_, group[0]["client"], Purpose.PASS_DROPOUT))
        for step in range(max(len(w["batches"]) for w in group)):
            active = [w for w in group if step < len(w["batches"])]
            rows = [w["batches"][step] for w in active]
            ends = np.cumsum([len(r) for r in rows]).tolist()
            bounds = list(zip([0, *ends[:-1]], ends))
            all_rows = torch.cat(rows)
            batch = {k: v.to(cfg.device, non_blocking=True) for k, v in take(data.train_inputs, all_rows).items()}
            y = data.train_labels[all_rows].to(cfg.device, non_blocking=True)
            with routed(self.layers, self.heads, bounds, [w["tensors"] for w in active], [w["scale"] for w in active]), \
                    autocast(cfg.precision, cfg.device):
                logits = model(batch)
                losses = [F.cross_entropy(logits[s:e], y[s:e]) for s, e in bounds]
            opt.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            opt.step()
            for w, loss in zip(active, losses):
                w["loss"] += loss.detach().to(torch.float64)


def time_step(res: Resident, global_state: State, executor: str, clients: list[int], repeats: int = 2) -> float:
    """Seconds of one forward + backward of `clients`' first batches (sequentially, or in one pass),
    the best of `repeats`; the model's parameters and the run's RNG are left as they were."""
    cfg, data, model = res.cfg, res.data, res.model
    rows = [torch.as_tensor(data.client_train[k][:cfg.batch_size], dtype=torch.long) for k in clients]
    tensors = [{n: global_state[n].detach().clone().requires_grad_(True) for n, _ in res.params} for _ in clients]
    best = float("inf")
    with torch.random.fork_rng(devices=[]):
        model.train()
        for _ in range(repeats + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            if executor == "sequential":
                for r in rows:
                    batch = take(data.train_inputs, r)
                    with autocast(cfg.precision, cfg.device):
                        loss = F.cross_entropy(model({k: v.to(cfg.device) for k, v in batch.items()}),
                                               data.train_labels[r].to(cfg.device))
                    loss.backward()
            else:
                layers, heads = _trainable_modules(res)
                ends = np.cumsum([len(r) for r in rows]).tolist()
                bounds = list(zip([0, *ends[:-1]], ends))
                all_rows = torch.cat(rows)
                batch = {k: v.to(cfg.device) for k, v in take(data.train_inputs, all_rows).items()}
                y = data.train_labels[all_rows].to(cfg.device)
                with routed(layers, heads, bounds, tensors, [1.0] * len(rows)), autocast(cfg.precision, cfg.device):
                    logits = model(batch)
                    loss = torch.stack([F.cross_entropy(logits[s:e], y[s:e]) for s, e in bounds]).sum()
                loss.backward()
            if cfg.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    load_state(res.params, global_state)
    return best
