"""The round loop: sample a cohort, plan each client's part, run the local updates, aggregate,
evaluate all clients. Assembly (fedcore/assembly.py), the executors (fedcore/executors/), the
evaluator (fedcore/evaluation.py) and the checkpoint (fedcore/checkpoint.py) do the rest; the loop
holds the run's state (`RunState`) and hands each part what it needs.

Randomness is derived, not carried: the partition from the partition seed, the cohort of round t
from (seed, t), and each client's shuffling and dropout from (seed, t, client). A run restored
after round t therefore continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import time
from typing import Any
from functools import partial
from pathlib import Path

import numpy as np
import torch

from fedcore import checkpoint
from fedcore.assembly import Resident, assemble
from fedcore.checkpoint import RunState
from fedcore.config import RunConfig
from fedcore.data import FederatedData
from fedcore.evaluation import Evaluator
from fedcore.executors import choose_executor
from fedcore.local import DivergedError
from fedcore.methods.base import ClientPlan, ClientUpdate, Method, ServerState, State, plan_for
from fedcore.metrics import lora_round_metrics
from fedcore.models import count_params
from fedcore.params import FrozenDeltas, load_state, snapshot
from fedcore.ranks import client_ranks
from fedcore.seeds import Purpose, derive_seed

STATE_VERSION = checkpoint.STATE_VERSION


def own_record(method: Method, own: Any, where: str) -> Any:
    """`own` if it is the method's Record (what the checkpoint knows how to save), else a TypeError."""
    if not isinstance(own, method.Record):
        raise TypeError(f"method {method.name!r}: {where} a {type(own).__name__} as its own server state; it must be "
                        f"its Record, {method.Record.__name__} (a frozen dataclass; docs/plugins.md)")
    return own


class Federation:
    def __init__(self, cfg: RunConfig, data: FederatedData | None = None):
        self.resident: Resident = assemble(cfg, data)
        res, self.cfg = self.resident, self.resident.cfg
        cfg = self.cfg
        global_state = snapshot(res.params)
        self.initial_state = global_state  # what a client-held copy starts from (never changed in place)
        server_state = ServerState(own=own_record(res.method, res.method.init_server_state(global_state),
                                                  "init_server_state() returned"))
        if res.lora:  # each client's rank (zero beyond it in the r_max model); methods may lower them
            ranks = client_ranks(cfg.model.lora, cfg.partition.num_clients, cfg.seed)
            server_state = server_state.updated(
                ranks=torch.tensor([ranks[c] for c in res.data.client_ids], dtype=torch.long))
        self.state = RunState(0, global_state, server_state)
        self.frozen = FrozenDeltas(res.model)
        self.evaluator = Evaluator(res)
        self.executor, self.executor_reason = choose_executor(res, global_state)
        self.total_params, self.trainable_params = count_params(res.model)
        self._sizes = np.array([len(i) for i in res.data.client_train])

    # what the rest of the engine, the entry points and the tests read of a run
    data = property(lambda self: self.resident.data)
    method = property(lambda self: self.resident.method)
    model = property(lambda self: self.resident.model)
    params = property(lambda self: self.resident.params)
    lora = property(lambda self: self.resident.lora)
    history = property(lambda self: self.state.history)

    @property
    def round(self) -> int:
        return self.state.round

    @round.setter
    def round(self, value: int) -> None:  # benchmarks/w2.py steps rounds by hand
        self.state.round = value

    @property
    def global_state(self) -> State:
        return self.state.global_state

    @global_state.setter
    def global_state(self, value: State) -> None:
        self.state.global_state = value

    @property
    def server_state(self) -> ServerState:
        return self.state.server_state

    @server_state.setter
    def server_state(self, value: ServerState) -> None:
        self.state.server_state = value

    # --- one round ---------------------------------------------------------------------------
    def sample_clients(self, round_: int) -> list[int]:
        n, m = self.data.num_clients, self.cfg.clients_per_round
        if m is None or m >= n:
            return list(range(n))
        rng = np.random.default_rng(derive_seed(self.cfg.seed, round_, 0, Purpose.COHORT))
        return sorted(rng.choice(n, size=m, replace=False).tolist())

    def plan(self, cohort: list[int]) -> list[ClientPlan]:
        """Each cohort client's part of the round: what it starts from, its rank and scale."""
        start = partial(self.method.client_start_state, self.global_state, self.server_state)
        return [plan_for(k, self.server_state, self.cfg.model.lora.alpha, start) for k in cohort]

    def train_cohort(self, cohort: list[int], round_: int) -> list[ClientUpdate]:
        """The cohort's local updates of round `round_`, from the current state (nothing else changes)."""
        return self.executor.run(self.resident, self.plan(cohort), round_, self.server_state)

    def personalize(self, cohort: list[int], round_: int) -> dict[int, State]:
        """Stage 2 of a personalizing method, on the current global branch: each client's held tensors."""
        return self.executor.personalize(self.resident, self.evaluator, self.global_state, self.server_state,
                                         self.initial_state, cohort, round_)

    def run_round(self) -> dict[str, float]:
        t0 = time.perf_counter()
        round_ = self.round + 1
        cohort = self.sample_clients(round_)
        plans = self.plan(cohort)  # kept for the round's LoRA figures (what each client was sent)
        updates = self.executor.run(self.resident, plans, round_, self.server_state)
        new_global, new_server = self.method.aggregate(self.global_state, self.server_state, updates)
        if not isinstance(new_server, ServerState):
            raise TypeError(f"method {self.method.name!r}: aggregate() returned a {type(new_server).__name__} as the "
                            f"server state; return a fedcore.methods.base.ServerState (docs/plugins.md)")
        own_record(self.method, new_server.own, "aggregate() returned")
        bad = [k for k, v in new_global.items() if not torch.isfinite(v).all()]
        if bad:
            raise DivergedError(f"round {round_}: aggregated weights are not finite ({bad[0]})")
        method_metrics = {k: float(v) for k, v in new_server.reported.items()}  # reported, not kept
        new_server = new_server.updated(reported={})
        if self.server_state.ranks is not None:
            ranks = self.server_state.ranks.clone()
            for u in updates:
                ranks[u.client] = u.rank
            new_server = new_server.updated(ranks=ranks)
        prev_global, prev_server = self.global_state, self.server_state
        self.state.global_state, self.state.server_state, self.state.round = new_global, new_server, round_
        self.frozen.apply(self.server_state.frozen_delta)
        if self.method.personalizes:  # stage 2, on the just-aggregated global branch
            self.server_state = self.server_state.updated(held={**self.server_state.held,
                                                               **self.personalize(cohort, round_)})
        n = np.array([u.num_samples for u in updates], dtype=np.float64)
        losses = np.array([u.metrics["train_loss"] for u in updates])
        metrics: dict[str, float] = {"round": float(round_), "cohort_size": float(len(cohort)),
                                     "train_loss": float((losses * n).sum() / n.sum()),
                                     "num_clients": float(self.data.num_clients),
                                     "min_client_size": float(self._sizes.min()),
                                     "max_client_size": float(self._sizes.max())}
        metrics.update(method_metrics)
        metrics["executor_batched"] = float(self.executor.name == "batched")
        for key in updates[0].reported:  # a method's client-side figures
            metrics[key] = float(np.average([u.reported[key] for u in updates], weights=n))
        if self.lora:
            metrics.update(lora_round_metrics(self.cfg.model.lora, self.global_state, self.server_state, updates,
                                              prev_global, plans, prev_server))
        t_train = time.perf_counter() - t0
        evaluated = round_ % self.cfg.eval.every == 0 or round_ == self.cfg.rounds
        if evaluated:
            self.state.last_eval = self.evaluate()
        # every key in every round (schedulers read them): between evaluations, the last values
        metrics.update(self.state.last_eval or self.nan_eval_metrics())
        metrics["evaluated"] = float(evaluated)
        metrics["seconds"] = time.perf_counter() - t0
        metrics["train_seconds"] = t_train
        self.state.history.append(metrics)
        return metrics

    # --- evaluation (fedcore/evaluation.py) --------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        return self.evaluator.evaluate(self.global_state, self.server_state, self.initial_state)

    def nan_eval_metrics(self) -> dict[str, float]:
        return self.evaluator.placeholder()

    def logits(self, inputs: dict[str, torch.Tensor], rows: np.ndarray | None = None) -> torch.Tensor:
        return self.evaluator.logits(inputs, rows)

    def personal_predictions(self, inputs: dict[str, torch.Tensor], client_rows: list[np.ndarray]) -> np.ndarray:
        return self.evaluator.personal_predictions(inputs, client_rows, self.global_state, self.server_state,
                                                   self.initial_state)

    @property
    def client_acc(self) -> np.ndarray:
        """acc_k of every active client at the last evaluation (NaN before the first)."""
        last = self.state.last_eval or {}
        return np.array([last.get(f"client_acc/{k}", np.nan) for k in self.data.client_ids])

    # --- the whole run -----------------------------------------------------------------------
    def run(self, rounds: int | None = None, on_round=None) -> list[dict[str, float]]:
        target = self.cfg.rounds if rounds is None else rounds
        while self.round < target:
            m = self.run_round()
            if on_round is not None:
                on_round(m)
        return self.history

    # --- state (fedcore/checkpoint.py) -------------------------------------------------------
    def state_dict(self) -> dict:
        return checkpoint.to_dict(self.state, self.cfg.fingerprint())

    def load_state_dict(self, sd: dict) -> None:
        self.state = checkpoint.from_dict(sd, self.cfg.fingerprint(), set(self.global_state), self.cfg.device,
                                          self.method.Record)
        load_state(self.params, self.global_state)
        self.frozen.apply(self.server_state.frozen_delta)

    def save(self, path: str | Path) -> Path:
        return checkpoint.save(path, self.state_dict())

    def restore(self, path: str | Path) -> None:
        self.load_state_dict(checkpoint.load(path))
