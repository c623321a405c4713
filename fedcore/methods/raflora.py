"""raFLoRA (Wu, Hu, Min, Wang 2026, "Preventing Rank Collapse in Federated Low-Rank Adaptation with
Client Heterogeneity", Alg. 1 / Eq. 8 as reconstructed in docs/methods.md "raFLoRA"): rank-partitioned
aggregation. With the distinct ranks r_(1) < ... < r_(M) of all clients, partition m holds the
ranks [r_(m-1), r_(m)); only clients with r_k >= r_(m) (its contributors C_m) carry it, and their
weights are renormalised over C_m so that every partition has total weight one:

    dW = sum_m sum_{k in C_m} (n_k / sum_{j in C_m} n_j) s_k B_k[:, P_m] A_k[P_m, :]

(FlexLoRA-style aggregation weights partition m by sum_{k in C_m} p_k < 1, which shrinks the
energy outside the smallest rank every round: rank collapse). dW is then redistributed by SVD as
in FlexLoRA (split "sym" by default: sqrt(S) on each side). Partitions come from every client's
rank, not only this round's cohort, so partial participation does not drop them: a partition that
no client of the round holds keeps the global model's own part, s_max B_g[:, P_m] A_g[P_m, :].

A round in which no client learns therefore returns the global update exactly (every partition is
the renormalised mean of identical copies, or the global's own), up to the SVD's choice of basis:
the no-op fixed point holds for the whole update, not only inside the smallest rank."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from fedcore import lora
from fedcore.methods.base import ClientUpdate, ServerState, State
from fedcore.methods.flexlora import redistribute
from fedcore.methods.lora_common import LoRAMethod


class RaFLoRAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    split: Literal["B", "sym"] = "sym"


def partition_weights(ranks: list[int], sizes: list[int], levels: list[int]) -> torch.Tensor:
    """[M, K] weights: row m is n_k / sum_{C_m} n over the contributors of partition m (r_k >= level m),
    zero elsewhere; a row with no contributor is all zero."""
    n = torch.tensor(sizes, dtype=torch.float64)
    w = torch.zeros(len(levels), len(ranks), dtype=torch.float64)
    for m, level in enumerate(levels):
        mask = torch.tensor([r >= level for r in ranks])
        if mask.any():
            w[m, mask] = n[mask] / n[mask].sum()
    return w


class RaFLoRA(LoRAMethod):
    name = "raflora"
    summary = "raFLoRA: rank-partitioned aggregation renormalised over each partition's contributors, then SVD"
    Params = RaFLoRAParams

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        layers, r_max, alpha = self.layout(updates)
        s_max = lora.scale(alpha, r_max)
        ranks = [u.rank or r_max for u in updates]
        everyone = server_state.ranks.tolist() if server_state.ranks is not None else ranks
        levels = sorted(set(everyone) | set(ranks))
        w = partition_weights(ranks, [u.num_samples for u in updates], levels)
        deltas = {}
        for prefix, (a, b) in layers.items():
            delta = 0
            for m, (lo, hi) in enumerate(zip([0, *levels[:-1]], levels)):
                if not (w[m] > 0).any():  # nobody in the cohort holds it: the global's own part
                    delta = delta + lora.product(global_state[a][lo:hi], global_state[b][:, lo:hi], s_max)
                for k, u in enumerate(updates):
                    if w[m, k] > 0:
                        s_k = lora.client_scale(alpha, u.rank, r_max)
                        delta = delta + w[m, k] * lora.product(u.state[a][lo:hi], u.state[b][:, lo:hi], s_k)
            deltas[prefix] = delta
        out = self.head_average(updates)
        out.update(redistribute(deltas, layers, updates[0].state, alpha, r_max, self.params.split))
        return out, server_state
