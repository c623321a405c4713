"""FLoRA (Wang et al., NeurIPS 2024, "FLoRA: Federated Fine-Tuning Large Language Models with
Heterogeneous Low-Rank Adaptations"; official code ATP-1010/FederatedLLM, model_aggregation.py):
the server stacks the clients' adapters,

    B_st = [s_1 B_1 | ... | s_K B_K],   A_st = [p_1 A_1; ...; p_K A_K],   p_k = n_k / n,

so that B_st A_st = sum_k p_k s_k B_k A_k exactly, whatever the ranks (each client's factors are
cut to its own rank r_k before stacking). The product is merged into the frozen base weights,
W0 <- W0 + B_st A_st, and every client starts the next round from freshly initialised adapters
(A Kaiming-uniform as peft does, B = 0). The head is averaged with FedAvg's weights.

A round in which no client learns: every client hands back B = 0, the stacked product is zero, and
the merged base (the whole update, all ranks included) is unchanged: exact, whatever the ranks."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedcore import lora
from fedcore.seeds import Purpose, derive_seed
from fedcore.methods.base import ClientUpdate, ServerState, State, size_weights
from fedcore.methods.lora_common import LoRAMethod


def stack(updates: list[ClientUpdate], weights: torch.Tensor, alpha: float, r_max: int,
          a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B_st [out, sum r_k], A_st [sum r_k, in]) of one layer, in float64."""
    bs, as_ = [], []
    for w, u in zip(weights.tolist(), updates):
        r = u.rank or r_max
        bs.append(lora.client_scale(alpha, u.rank, r_max) * u.state[b][:, :r].to(torch.float64))
        as_.append(w * u.state[a][:r].to(torch.float64))
    return torch.cat(bs, dim=1), torch.cat(as_, dim=0)


def fresh_factors(A: torch.Tensor, B: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """peft's default LoRA init: A ~ U(-1/sqrt(in), 1/sqrt(in)) (Kaiming-uniform, a=sqrt(5)), B = 0."""
    bound = 1 / math.sqrt(A.shape[1])
    fresh = (torch.rand(A.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return fresh.to(A.dtype), torch.zeros_like(B)


@dataclass(frozen=True)
class FLoRARecord:
    round: int = 0  # the rounds merged into the base so far (seeds each round's fresh adapters)


class FLoRA(LoRAMethod):
    name = "flora"
    summary = "FLoRA: stacked adapters (exact sum of p_k s_k B_k A_k) merged into the base; fresh adapters every round"
    Record = FLoRARecord

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        layers, r_max, alpha = self.layout(updates)
        weights = size_weights(updates)
        round_ = self.own(server_state).round + 1
        gen = torch.Generator().manual_seed(derive_seed(self.seed, round_, 0, Purpose.FLORA_ROUND))
        out, merged_all = self.head_average(updates), dict(server_state.frozen_delta)
        for prefix, (a, b) in layers.items():
            B_st, A_st = stack(updates, weights, alpha, r_max, a, b)
            key = lora.base_weight_key(prefix)
            merged = merged_all.get(key, torch.zeros(B_st.shape[0], A_st.shape[1], dtype=torch.float64))
            merged_all[key] = (merged.to(torch.float64) + B_st @ A_st).to(torch.float32)
            out[a], out[b] = fresh_factors(global_state[a], global_state[b], gen)
        return out, server_state.updated(own=FLoRARecord(round_), frozen_delta=merged_all)
