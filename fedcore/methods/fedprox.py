"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", Eq. 2):
the local objective adds (mu / 2) * ||w - w^t||^2 to the task loss, with w^t the weights the
client received; the server aggregates as FedAvg."""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedcore.methods.base import LocalContext
from fedcore.methods.fedavg import FedAvg


class FedProxParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mu: float = Field(0.01, ge=0)  # the paper's TextCNN runs (E3) use 0.01


class FedProx(FedAvg):
    name = "fedprox"
    summary = "FedProx: FedAvg with a proximal term (mu/2)||w - w_global||^2 in the local loss"
    Params = FedProxParams

    def after_backward(self, ctx: LocalContext) -> None:
        # the proximal term's gradient mu * (w - w^t), added directly: same update as putting
        # the term in the loss, without building it into the autograd graph
        mu = self.params.mu
        if mu == 0:
            return
        with torch.no_grad():
            for name, p in ctx.params:
                if p.grad is not None:
                    p.grad.add_(p - ctx.start_state[name], alpha=mu)

    @staticmethod
    def proximal_term(params, start_state, mu: float) -> torch.Tensor:
        """(mu / 2) * ||w - w^t||^2, the term whose gradient after_backward adds (for tests/logs)."""
        return 0.5 * mu * sum(((p - start_state[n]) ** 2).sum() for n, p in params)
