"""FedIT (Zhang et al. 2024, "Towards Building the Federated GPT: Federated Instruction
Tuning"): each client trains LoRA adapters; the server averages A and B separately with
weights n_k / n (and the trainable head the same way). Averaging the factors is not averaging
the products B_k A_k; that inexactness is what FLoRA, FlexLoRA and LoRA-FAIR address.

Heterogeneous ranks (the naive baseline of the rank-heterogeneity papers): factors are zero-padded
to r_max and averaged, each client's scale ratio s_k / s_max = r_max / r_k folded into its B only
(lora.scaled_factor_average, fold "B"), and a client receives the average truncated to its rank
with B divided by its own ratio. Inside the smallest rank this is a fixed point: a round in which
no client learns hands back the same factors. Rank slots beyond it are averaged with the zeros of
the clients that lack them, so they shrink by the weight of their holders in A and in B each round:
the rank collapse raFLoRA's paper measures, by design of this baseline. `fold: sym` (the scale ratio's
square root on each factor) is there only to compare with: it is not a fixed point."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from fedcore import lora
from fedcore.methods.base import ClientUpdate, ServerState, State, size_weights
from fedcore.methods.lora_common import LoRAMethod


class FedITParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # mixed ranks: where each client's scale ratio goes before averaging. "B" is a fixed point of a
    # round in which no client learns; "sym" (sqrt on each factor) is not: it grows the shared
    # product every round, and is kept only to compare with (lora.scaled_factor_average)
    fold: Literal["B", "sym"] = "B"


class FedIT(LoRAMethod):
    name = "fedit"
    summary = "FedIT: LoRA A and B averaged separately, weighted by n_k (zero-padded across ranks)"
    Params = FedITParams

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        layers, r_max, alpha = self.layout(updates)
        out = self.head_average(updates)
        fold = getattr(self.params, "fold", "B")  # FedPuReL reuses this aggregation with its own params
        out.update(lora.scaled_factor_average(updates, size_weights(updates), alpha, r_max, layers, fold))
        return out, server_state
