"""FedAvgW (FM Fairness Paradox, Naseer & Shoaib 2026, README and notebook `fedavgw_aggregate`;
docs/methods.md "FedAvgW"): inverse-size weighted aggregation of the LoRA factors,

    w_k^LoRA = (1/n_k)^beta / sum_j (1/n_j)^beta      for state keys containing "lora_",
    w_k^std  = n_k / sum_j n_j                        for every other key (the classifier head).

A and B are averaged separately (FedIT-style). beta = 0 gives uniform weights on the LoRA keys
(not FedAvg's size weights)."""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedcore.methods.base import (ClientUpdate, Method, ServerState, State, is_lora_key, size_weights,
                                  weighted_average)


class FedAvgWParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    beta: float = Field(0.5, ge=0)  # the paper reports beta in {0.1, 0.5}


def inverse_size_weights(num_samples: list[int], beta: float) -> torch.Tensor:
    inv = torch.tensor([1.0 / n for n in num_samples], dtype=torch.float64) ** beta
    return inv / inv.sum()


class FedAvgW(Method):
    name = "fedavgw"
    summary = "FedAvgW: LoRA factors weighted by (1/n_k)^beta, other keys by n_k"
    requires_lora = True
    Params = FedAvgWParams

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        states = [u.state for u in updates]
        keys = list(states[0])
        lora = [k for k in keys if is_lora_key(k)]
        rest = [k for k in keys if not is_lora_key(k)]
        w_lora = inverse_size_weights([u.num_samples for u in updates], self.params.beta)
        out = weighted_average(states, w_lora, lora)
        out.update(weighted_average(states, size_weights(updates), rest))
        return {k: out[k] for k in keys}, server_state
