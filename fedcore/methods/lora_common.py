"""What the federated LoRA methods share: the non-LoRA keys (the classifier head) are averaged
with FedAvg's size weights, and a client receives the global factors rescaled to its rank."""
from __future__ import annotations

from fedcore import lora
from fedcore.methods.base import (ClientPlan, ClientUpdate, Method, ServerState, State, is_lora_key, size_weights,
                                  weighted_average)


class LoRAMethod(Method):
    requires_lora = True
    handles_mixed_ranks = True

    def client_start_state(self, global_state: State, server_state: ServerState, plan: ClientPlan) -> State:
        rank = lora.resident_rank(global_state) if plan.rank is None else plan.rank
        return lora.for_client(global_state, rank, self.lora_alpha)

    @staticmethod
    def head_average(updates: list[ClientUpdate]) -> State:
        keys = [k for k in updates[0].state if not is_lora_key(k)]
        return weighted_average([u.state for u in updates], size_weights(updates), keys) if keys else {}

    @staticmethod
    def check_lora(name: str, updates: list[ClientUpdate]) -> dict[str, tuple[str, str]]:
        layers = lora.lora_layers(updates[0].state)
        if not layers:
            raise ValueError(f"{name}: the client updates hold no LoRA factors (model.tuning must be 'lora')")
        return layers

    def layout(self, updates: list[ClientUpdate]) -> tuple[dict[str, tuple[str, str]], int, float]:
        """(LoRA layers, r_max, alpha) of a round's updates; alpha falls back to r_max (scale 1)."""
        layers = self.check_lora(self.name, updates)
        r_max = lora.resident_rank(updates[0].state)
        return layers, r_max, self.lora_alpha if self.lora_alpha is not None else float(r_max)
