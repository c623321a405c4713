"""HetLoRA (Cho et al., EMNLP 2024, "Heterogeneous LoRA for Federated Fine-tuning of On-Device
Foundation Models"; docs/methods.md "HetLoRA"): clients hold different ranks; the server zero-pads their
factors to r_max and averages A and B separately with sparsity weights

    w_k = ||s_k B_k A_k||_F / sum_j ||s_j B_j A_j||_F     (per LoRA layer, not n_k),

with each client's scale ratio s_k / s_max folded into its B (lora.scaled_factor_average, fold "B":
the factors inside the smallest rank are a fixed point of a round in which no client learns; slots
beyond it shrink by the norm weight of their holders, zero-padding's rank collapse), then each
client receives the average truncated to its rank. Locally, rank self-pruning adds
lambda * ||B[:, p:r]|| * ||A[p:r, :]|| (p = floor(gamma r), summed over layers) to the loss, and a
client whose pruned-part norm ends the round below where it ended its previous round (below its
start in its first round; docs/methods.md) lowers its rank to p (never below min_rank); the server
keeps each client's last pruned-part norm. Lowering the rank from r to p raises the client's scale
from alpha / r to alpha / p; the engine multiplies its kept B columns by p / r (params.lower_rank),
so its product keeps its value and only the pruned slots leave it. Pruning is the one way HetLoRA moves in a round in which
no client learns: the server's average can end below a client's own last norm, and the rule then
prunes (by design of the rule; with prune_lambda 0 the aggregation alone is a fixed point inside
the smallest rank)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedcore import lora
from fedcore.methods.base import ClientUpdate, LocalContext, ServerState, State, size_weights
from fedcore.methods.lora_common import LoRAMethod


class HetLoRAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    gamma: float = Field(0.99, gt=0, lt=1)  # the paper's decay factor
    prune_lambda: float = Field(0.01, ge=0)  # 0 turns self-pruning off
    min_rank: int = Field(1, ge=1)
    fold: Literal["B", "sym"] = "B"  # as FedIT's: "sym" is not a fixed point, kept only to compare with


def norm_weights(updates: list[ClientUpdate], alpha: float, r_max: int, a: str, b: str) -> torch.Tensor:
    norms = torch.tensor([float(torch.linalg.matrix_norm(lora.product(u.state[a], u.state[b],
                                                                      lora.client_scale(alpha, u.rank, r_max))))
                          for u in updates], dtype=torch.float64)
    return norms / norms.sum() if norms.sum() > 0 else size_weights(updates)


def pruned_norm(params, rank: int, gamma: float) -> torch.Tensor:
    """sum over layers of ||B[:, p:r]|| * ||A[p:r, :]||, p = floor(gamma r)."""
    p = math.floor(gamma * rank)
    named = dict(params)
    total = torch.zeros(())
    for a, b in lora.lora_layers(named).values():
        total = total + named[b][:, p:rank].norm() * named[a][p:rank].norm()
    return total


@dataclass(frozen=True)
class HetLoRARecord:
    # each client's pruned-part norm at the end of its last round (NaN: none yet, or just pruned): the
    # reference its next round's pruning is judged against; None before the first aggregation
    pruned_norm: torch.Tensor | None = None


class HetLoRA(LoRAMethod):
    name = "hetlora"
    summary = "HetLoRA: zero-padded factors averaged with norm weights, truncated per client; rank self-pruning"
    Params = HetLoRAParams
    Record = HetLoRARecord

    def _prunable(self, ctx: LocalContext) -> bool:
        return (self.params.prune_lambda > 0 and ctx.rank is not None
                and math.floor(self.params.gamma * ctx.rank) >= self.params.min_rank)

    def on_local_start(self, ctx: LocalContext) -> None:
        if self._prunable(ctx):  # reference: the norm this client reached last time, else its start
            last = self.own(ctx.server).pruned_norm
            ref = float(last[ctx.client]) if last is not None else math.nan
            if math.isnan(ref):
                with torch.no_grad():
                    ref = float(pruned_norm(ctx.params, ctx.rank, self.params.gamma))
            ctx.scratch["pruned_norm_ref"] = ref

    def local_loss(self, logits, labels, ctx: LocalContext):
        loss = super().local_loss(logits, labels, ctx)
        if self._prunable(ctx):
            loss = loss + self.params.prune_lambda * pruned_norm(ctx.params, ctx.rank, self.params.gamma)
        return loss

    def on_local_end(self, ctx: LocalContext) -> None:
        if self._prunable(ctx):
            with torch.no_grad():
                end = float(pruned_norm(ctx.params, ctx.rank, self.params.gamma))
                if end < ctx.scratch["pruned_norm_ref"]:
                    # the engine zeroes the slots from the new rank on and rescales B to its scale
                    ctx.rank = math.floor(self.params.gamma * ctx.rank)
                    end = math.nan  # a new rank, a new pruned part: the next round starts its own reference
            ctx.report["pruned_norm"] = end

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        layers, r_max, alpha = self.layout(updates)
        out = self.head_average(updates)
        for prefix, (a, b) in layers.items():
            w = norm_weights(updates, alpha, r_max, a, b)
            out.update(lora.scaled_factor_average(updates, w, alpha, r_max, {prefix: (a, b)}, self.params.fold))
        clients = len(server_state.ranks) if server_state.ranks is not None else 1 + max(u.client for u in updates)
        last = self.own(server_state).pruned_norm
        norms = torch.full((clients,), math.nan, dtype=torch.float64) if last is None else last.clone()
        for u in updates:
            norms[u.client] = u.metrics.get("pruned_norm", math.nan)
        return out, server_state.updated(own=HetLoRARecord(norms))
