"""FFA-LoRA (Sun et al., ICLR 2024, "Improving LoRA in Privacy-preserving Federated Learning"):
A stays frozen at its random initialisation, shared by every client through the common seed,
and only B is trained. Averaging then is exact: sum_k p_k s_k B_k A_0 = (sum_k p_k s_k B_k) A_0.
The paper compensates the frozen A with a larger LoRA alpha (set model.lora.alpha).

Mixed ranks (not in the paper, which uses one rank): column i of B exists only on the clients whose
rank r_k > i, so it is averaged over those clients alone, their weights n_k renormalised over them,
each client's B_k times its scale ratio s_k / s_max; a column that no client of the round holds
keeps its value (lora.holder_factor_average). The global product is then exactly the weighted mean, slot by slot, of the
products the clients hold, and a round in which no client learns leaves every column unchanged
(zero-padded averaging would shrink the columns beyond the smallest rank every round)."""
from __future__ import annotations

from fedcore import lora
from fedcore.methods.base import ClientUpdate, ServerState, State, size_weights
from fedcore.methods.lora_common import LoRAMethod


class FFALoRA(LoRAMethod):
    name = "ffa_lora"
    summary = "FFA-LoRA: A frozen at a shared random init, only B trained and averaged (exact)"

    def trains_locally(self, name: str) -> bool:
        return lora.A_TAG not in name

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        layers, r_max, alpha = self.layout(updates)
        out = self.head_average(updates)
        averaged = lora.holder_factor_average(updates, size_weights(updates), alpha, r_max, layers, global_state)
        for a, b in layers.values():
            out[a], out[b] = global_state[a], averaged[b]  # A never moves
        return out, server_state
