"""FedIT (Zhang et al. 2024, "Towards Building the Federated GPT: Federated Instruction
Tuning"): each client trains LoRA adapters; the server averages A and B separately with
weights n_k / n (and the trainable head the same way). Averaging the factors is not averaging
the products B_k A_k; that inexactness is what FLoRA, FlexLoRA and LoRA-FAIR address.
Heterogeneous ranks (zero padding) come with the federated LoRA family."""
from __future__ import annotations

from fedcore.methods.base import ClientUpdate, State, is_lora_key
from fedcore.methods.fedavg import FedAvg


class FedIT(FedAvg):
    name = "fedit"
    summary = "FedIT: LoRA A and B averaged separately, weighted by n_k"
    requires_lora = True

    def aggregate(self, global_state: State, server_state: State,
                  updates: list[ClientUpdate]) -> tuple[State, State]:
        if not any(is_lora_key(k) for k in updates[0].state):
            raise ValueError("fedit: the client updates hold no LoRA factors (model.tuning must be 'lora')")
        return super().aggregate(global_state, server_state, updates)
