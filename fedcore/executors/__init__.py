"""How a cohort's local updates run. Sequential (sequential.py): one resident model, one client after
another. Batched (batched.py): a LoRA cohort in one pass over the frozen base. `choose_executor`
picks one (run.executor: auto measures both once per model, device and batch shape, and caches the
choice)."""
from __future__ import annotations

import json
import os
from typing import Protocol

import torch

from fedcore.assembly import Resident
from fedcore.data.tokenize import cache_dir
from fedcore.executors import batched
from fedcore.executors.batched import BatchedLoRAExecutor, refusal
from fedcore.executors.sequential import SequentialExecutor
from fedcore.methods.base import ClientPlan, ClientUpdate, ServerState, State

__all__ = ["BatchedLoRAExecutor", "Executor", "SequentialExecutor", "choose_executor", "refusal"]


class Executor(Protocol):
    """What the round loop asks of an executor: a cohort's local updates, one per plan, from the
    server state of the round. Stage 2 of a personalizing method is the sequential executor's only
    (`SequentialExecutor.personalize`): the batched one refuses personalizing methods (`refusal`)."""
    name: str

    def run(self, res: Resident, plan: list[ClientPlan], round_: int, server_state: ServerState
            ) -> list[ClientUpdate]: ...


def choose_executor(res: Resident, global_state: State) -> tuple[Executor, str]:
    """(executor, why): the configured one, or with `auto` the faster of sequential and batched for this
    model, device and batch shape (measured once, cached in the tensor cache directory)."""
    cfg = res.cfg
    if cfg.executor == "sequential":
        return SequentialExecutor(), "configured"
    if cfg.executor == "batched":
        return BatchedLoRAExecutor(res), "configured"
    reason = refusal(res)
    if reason is not None:
        return SequentialExecutor(), f"auto: batched does not apply ({reason})"
    cohort = cfg.clients_per_round or res.data.num_clients
    clients = list(range(min(cohort, cfg.executor_clients or cohort, res.data.num_clients)))
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
        known[key] = (batched.time_step(res, global_state, "batched", clients)
                      / batched.time_step(res, global_state, "sequential", clients))
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, path)
    ratio = known[key]
    why = f"auto: one pass of {len(clients)} clients took {ratio:.2f}x the time of their sequential steps on {cfg.device}"
    return (BatchedLoRAExecutor(res) if ratio < 0.95 else SequentialExecutor()), why
