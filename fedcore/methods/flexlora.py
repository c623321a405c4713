"""FlexLoRA (Bai et al., NeurIPS 2024, "Federated Fine-tuning of Large Language Models under
Heterogeneous Tasks and Client Resources"): the server forms the full-size update

    dW = sum_k p_k s_k B_k A_k,    p_k = n_k / n,  s_k = alpha / r_k,

takes its SVD dW = U S V^T, and hands client k the best rank-r_k approximation: by default all of
S in B as the official code does (B_k = U[:, :r_k] S[:r_k] / s_k, A_k = V^T[:r_k]), or split
"sym" (sqrt(S) on each side). The global model keeps the rank-r_max part at scale alpha / r_max.

A round in which no client learns: client k hands back the global's top r_k components, so the
top r_min components (the part every client holds) come back unchanged, and component i beyond
r_min comes back times the weight of the clients with r_k > i: the rank collapse that raFLoRA's
paper measures for FlexLoRA-style weighting, by design of this method."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from fedcore import lora
from fedcore.methods.base import ClientUpdate, ServerState, State, size_weights
from fedcore.methods.lora_common import LoRAMethod


class FlexLoRAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    split: Literal["B", "sym"] = "B"


def redistribute(deltas: dict[str, torch.Tensor], layers: dict[str, tuple[str, str]], like: State,
                 alpha: float, r_max: int, split: str) -> State:
    """Global factors at r_max (scale alpha / r_max) from each layer's full update."""
    out = {}
    s_max = lora.scale(alpha, r_max)
    for prefix, (a, b) in layers.items():
        A, B = lora.svd_factors(deltas[prefix], r_max, split)
        out[a], out[b] = A.to(like[a].dtype), (B / s_max).to(like[b].dtype)
    return out


class FlexLoRA(LoRAMethod):
    name = "flexlora"
    summary = "FlexLoRA: full update sum p_k s_k B_k A_k, SVD, each client gets its top r_k components"
    Params = FlexLoRAParams

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        layers, r_max, alpha = self.layout(updates)
        weights = size_weights(updates)
        deltas = {p: lora.ideal_update(updates, weights, alpha, r_max, a, b) for p, (a, b) in layers.items()}
        out = self.head_average(updates)
        out.update(redistribute(deltas, layers, updates[0].state, alpha, r_max, self.params.split))
        return out, server_state
