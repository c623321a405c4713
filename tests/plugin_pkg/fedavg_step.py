"""FedAvg with a server step size (the server-learning-rate form of Reddi et al. 2021, "Adaptive
Federated Optimization", with plain SGD on the server): w <- w + eta * (sum_k p_k w_k - w),
p_k = n_k / n. eta = 1 is FedAvg; eta < 1 keeps part of the previous global model."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fedcore.methods.base import ClientUpdate, Method, State, size_weights, weighted_average


class FedAvgStepParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    server_lr: float = Field(1.0, gt=0)


class FedAvgStep(Method):
    name = "fedavg_step"
    summary = "FedAvg with a server step size: w <- w + server_lr * (weighted average - w)"
    Params = FedAvgStepParams

    def aggregate(self, global_state: State, server_state: State,
                  updates: list[ClientUpdate]) -> tuple[State, State]:
        avg = weighted_average([u.state for u in updates], size_weights(updates))
        eta = self.params.server_lr
        return {k: global_state[k] + eta * (avg[k] - global_state[k]) for k in avg}, server_state
