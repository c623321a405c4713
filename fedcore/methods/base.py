"""The hooks a federated method supplies; the engine (local.py, federation.py) owns the loop.

Shaped after pfl-research's FederatedAveraging and Flower's Strategy: a small class with frozen,
typed hyperparameters. Weights travel as dicts name -> tensor over the model's trainable
parameters; frozen weights stay in the one resident model and never travel. What the server keeps
between rounds is a `ServerState`: the parts the engine reads are named fields, the method's own
part is its `own` record (an instance of the method's `Record`, a frozen dataclass).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError

State = dict[str, torch.Tensor]


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class ClientUpdate:
    client: int  # index of the client among the active clients
    num_samples: int  # training samples the client holds
    state: State  # its trainable tensors after local training
    metrics: dict[str, float] = field(default_factory=dict)  # train_loss, steps, and what the method noted (ctx.report)
    rank: int | None = None  # its LoRA rank after the round (LoRA factors are zero beyond it)
    reported: dict[str, float] = field(default_factory=dict)  # the method's figures to report (ctx.reported)


@dataclass(frozen=True)
class NoRecord:
    """The server record of a method that keeps nothing of its own between rounds."""


@dataclass(frozen=True)
class ServerState:
    """What the server keeps between rounds, checkpointed with the run. The engine reads and keeps the
    named fields; `own` is the method's alone: an instance of its `Record` (a frozen dataclass of
    tensors and numbers), from init_server_state, then from its aggregate."""
    own: Any = field(default_factory=NoRecord)
    ranks: torch.Tensor | None = None  # each client's LoRA rank (LoRA runs); the engine records the updates' ranks
    # frozen parameter name -> what is added to its initial value (FLoRA merges its rounds into the base)
    frozen_delta: State = field(default_factory=dict)
    held: dict[int, State] = field(default_factory=dict)  # client -> tensors it keeps between rounds (never averaged)
    reported: dict[str, float] = field(default_factory=dict)  # the method's figures of this aggregation

    def held_state(self, client: int, names, default: State) -> State:
        """Client `client`'s held tensors (its initial values `default` until it has trained)."""
        mine = self.held.get(client, {})
        return {n: mine.get(n, default[n]) for n in names}

    def updated(self, **changes) -> "ServerState":
        return replace(self, **changes)


def as_reported(value: float) -> float:
    """A server figure as the engine has always reported it: through a float32 tensor (the results of
    runs from before the typed server state reproduce bit for bit)."""
    return float(torch.tensor(value))


@dataclass(frozen=True)
class ClientPlan:
    """One client's part of a round, as the engine plans it before the executor runs it: the one
    place a client's rank and scale are read from (the executors, the methods and the metrics)."""
    client: int
    rank: int | None = None  # its LoRA rank (LoRA runs): factors are zero beyond it
    scale: float | None = None  # its LoRA scale alpha / rank
    # what the server sends it, Method.client_start_state(global, server, this plan), made when the
    # executor asks: a sequential cohort then holds one client's start state at a time, not all of them
    make_start: Callable[["ClientPlan"], State] | None = field(default=None, repr=False, compare=False)

    def start_state(self) -> State:
        return self.make_start(self)


def plan_for(client: int, server_state: ServerState, lora_alpha: float | None = None,
             make_start: Callable[[ClientPlan], State] | None = None) -> ClientPlan:
    """Client `client`'s plan: its rank as the server state records it, its scale lora_alpha / rank."""
    rank = None if server_state.ranks is None else int(server_state.ranks[client])
    scale = lora_alpha / rank if rank is not None and lora_alpha is not None else None
    return ClientPlan(client, rank, scale, make_start)


@dataclass(frozen=True)
class PersonalStage:
    """Stage 2 of a personalizing method, which the engine runs after every aggregation: for each client
    of the round, its private branch (its own copy of the trainable tensors, on the same frozen base)
    trained on top of the frozen, just-aggregated global branch, with the method's `personal_loss`,
    by a fresh SGD optimizer per client and round."""
    lr: float
    epochs: int
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class LocalContext:
    """What a method's local hooks may read: which round and client, and scratch space."""

    round: int
    client: int
    num_samples: int
    params: list[tuple[str, torch.nn.Parameter]]
    start_state: State
    scratch: dict[str, Any] = field(default_factory=dict)
    rank: int | None = None  # the client's LoRA rank; a method may lower it (HetLoRA's pruning)
    server: ServerState = field(default_factory=ServerState)  # the server state of this round (read only)
    report: dict[str, float] = field(default_factory=dict)  # sent to the server in ClientUpdate.metrics
    reported: dict[str, float] = field(default_factory=dict)  # reported by the round (cohort mean, n_k weights)
    batch: dict[str, torch.Tensor] = field(default_factory=dict)  # the current batch's inputs
    model: torch.nn.Module | None = None  # the resident model (FML reads its private half)


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]
    requires_lora: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False  # the data carries a zero-shot teacher's logits ("teacher_logits")
    Params: ClassVar[type[BaseModel]] = NoParams
    # what the method keeps on the server between rounds (ServerState.own): a frozen dataclass whose
    # fields are tensors, ints or floats, checkpointed with the run
    Record: ClassVar[type] = NoRecord
    # a second, private set of the trainable tensors per client, trained after aggregation on top of
    # the frozen global model and evaluated as global + private logits (FedPuReL's stage 2)
    personalizes: ClassVar[bool] = False
    # Clients of different LoRA ranks in one r_max model: a method that handles them hands each client
    # the global factors rescaled to its scale alpha / r_k and aggregates scaled products
    # (methods/lora_common.py), with the shared part of the update a fixed point of a round in which
    # no client learns (tests/test_noop_rounds.py). The config refuses mixed ranks for any other
    # method, with this reason.
    handles_mixed_ranks: ClassVar[bool] = False
    mixed_ranks_refusal: ClassVar[str] = ("it averages the raw factors, without each client's rescaling to its "
                                          "rank and scale alpha / r_k")
    lora_alpha: float | None = None  # set by the engine for LoRA models: s_k = lora_alpha / r_k
    seed: int = 0  # the run's seed (set by the engine), for server-side randomness

    def __init__(self, params: BaseModel | dict | None = None):
        self.params = params if isinstance(params, BaseModel) else self.parse_params(params or {})

    @classmethod
    def parse_params(cls, params: dict[str, Any]) -> BaseModel:
        try:
            parsed = cls.Params.model_validate(params)
        except ValidationError as err:
            e = err.errors()[0]
            field_name = ".".join(str(p) for p in e["loc"])
            allowed = ", ".join(f.alias or n for n, f in cls.Params.model_fields.items()) or "none"  # 'lambda', not 'lam'
            raise ValueError(
                f"method.params.{field_name}: {e['msg']} (got {e.get('input')!r}) for method "
                f"{cls.name!r}; its parameters: {allowed}"
            ) from None
        for name, value in parsed.model_dump(by_alias=True).items():  # a plugin's Params too
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"method.params.{name}: must be a finite number (got {value!r}) for method {cls.name!r}")
        return parsed

    # --- server side -------------------------------------------------------------------------
    def init_server_state(self, global_state: State):
        """The method's own record before the first round (ServerState.own): a `Record`."""
        return self.Record()

    def own(self, server_state: ServerState):
        """This method's record in `server_state`: a fresh `Record` where it holds none yet (a
        ServerState() made by hand, as before a first round)."""
        own = server_state.own
        return self.Record() if isinstance(own, NoRecord) else own

    def client_start_state(self, global_state: State, server_state: ServerState, plan: ClientPlan) -> State:
        """What the server sends the client of `plan` (default: the global trainable weights). For LoRA
        models, plan.rank is the client's rank and plan.scale its alpha / rank; the engine zeroes the
        factors beyond the rank after loading."""
        return global_state

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        """Pure function of (server state, client updates) -> (new global, new server state): the
        given one where the method keeps nothing, else `server_state.updated(own=..., ...)`. The
        engine reads `frozen_delta` (each frozen parameter becomes its initial value plus it) and
        `reported` (the round's figures), records the updates' ranks and keeps `held`."""
        raise NotImplementedError

    # --- client side -------------------------------------------------------------------------
    def on_local_start(self, ctx: LocalContext) -> None:
        pass

    def local_loss(self, logits: torch.Tensor, labels: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def after_backward(self, ctx: LocalContext) -> None:
        """Optional gradient transform, applied before the optimizer step."""

    def trains_locally(self, name: str) -> bool:
        """Whether clients update this trainable tensor (FFA-LoRA keeps A fixed); the engine drops the
        gradients of the others before each step, so they neither move nor decay."""
        return True

    def on_local_end(self, ctx: LocalContext) -> None:
        """After the client's last step, before its state is sent (e.g. lower ctx.rank)."""

    # --- the model and personalization ---------------------------------------------------------
    def build_model(self, make):
        """The resident model, from `make()` (which builds one from the config). FML builds two."""
        return make()

    def personal_stage(self) -> PersonalStage:
        """How stage 2 trains each private branch (only for methods that personalize)."""
        raise NotImplementedError

    def personal_loss(self, global_logits: torch.Tensor, private_logits: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
        """The private branch's loss (only for methods that personalize)."""
        raise NotImplementedError

    def personal_logits(self, global_logits: torch.Tensor, private_logits: torch.Tensor) -> torch.Tensor:
        """The personalized model's prediction from its two branches (default: the logit sum)."""
        return global_logits + private_logits


def size_weights(updates: list[ClientUpdate]) -> torch.Tensor:
    n = torch.tensor([u.num_samples for u in updates], dtype=torch.float64)
    return n / n.sum()


def weighted_average(states: list[State], weights: torch.Tensor, keys=None) -> State:
    """sum_k w_k * state_k[key] for each key (in float64, cast back to the tensor's dtype)."""
    keys = list(states[0]) if keys is None else keys
    out = {}
    for key in keys:
        acc = torch.zeros_like(states[0][key], dtype=torch.float64)
        for w, s in zip(weights.tolist(), states):
            acc.add_(s[key], alpha=w)  # promoted to float64 in place: no float64 copy of each state
        out[key] = acc.to(states[0][key].dtype)
    return out


def is_lora_key(key: str) -> bool:
    return "lora_" in key
