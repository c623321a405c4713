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
the rank collapse raFLoRA's paper measures, by design of this baseline."""
from __future__ import annotations

from fedcore import lora
from fedcore.methods.base import ClientUpdate, State, size_weights
from fedcore.methods.lora_common import LoRAMethod


class FedIT(LoRAMethod):
    name = "fedit"
    summary = "FedIT: LoRA A and B averaged separately, weighted by n_k (zero-padded across ranks)"

    def aggregate(self, global_state: State, server_state: State,
                  updates: list[ClientUpdate]) -> tuple[State, State]:
        layers, r_max, alpha = self.layout(updates)
        out = self.head_average(updates)
        out.update(lora.scaled_factor_average(updates, size_weights(updates), alpha, r_max, layers))
        return out, server_state
