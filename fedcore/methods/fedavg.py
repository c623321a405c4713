"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", Algorithm 1): clients run local SGD from the global weights; the server
sets w <- sum_k (n_k / n) w_k over the round's cohort."""
from __future__ import annotations

from fedcore.methods.base import ClientUpdate, Method, ServerState, State, size_weights, weighted_average


class FedAvg(Method):
    name = "fedavg"
    summary = "FedAvg: sample-size weighted average of the clients' trainable weights"

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        return weighted_average([u.state for u in updates], size_weights(updates)), server_state
