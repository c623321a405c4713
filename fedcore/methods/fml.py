"""FML, Federated Mutual Learning (Shen et al. 2020, "Federated Mutual Learning"; a Fed-LPFM
baseline, docs/methods.md "FML"). Each client holds a private model p and trains it together with the
shared "meme" model m by deep mutual learning, each model distilling the other's prediction:

    L_p = alpha CE(y, p) + (1 - alpha) KL(m || p),    L_m = beta CE(y, m) + (1 - beta) KL(p || m)

(the distillation target detached, so one backward of L_p + L_m is the two simultaneous updates).
Only the meme model is aggregated (FedAvg, n_k weights) and evaluated as the global model; each
private model persists with its client across rounds (kept in the server state's `held` part, so
it is checkpointed; it is never averaged or sent to another client)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from fedcore.methods.base import (ClientPlan, ClientUpdate, LocalContext, Method, ServerState, State, size_weights,
                                  weighted_average)
from fedcore.models.mutual import MutualPair

SHARED, PRIVATE = "shared.", "private."


class FMLParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha: float = Field(0.5, ge=0, le=1)  # private model: weight of its CE (1 - alpha on the KL)
    beta: float = Field(0.5, ge=0, le=1)  # meme model: weight of its CE


def kl(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(logits)), mean over the batch, the target detached."""
    log_t = F.log_softmax(target_logits.detach(), -1)
    return (log_t.exp() * (log_t - F.log_softmax(logits, -1))).sum(-1).mean()


class FML(Method):
    name = "fml"
    summary = "FML: a private and a shared (meme) model per client trained by mutual distillation; only the meme is averaged"
    Params = FMLParams

    def build_model(self, make):
        return MutualPair(make(), make())

    def client_start_state(self, global_state: State, server_state: ServerState, plan: ClientPlan) -> State:
        private = [k for k in global_state if k.startswith(PRIVATE)]
        # the global state's private tensors are the initial private model
        return {**global_state, **server_state.held_state(plan.client, private, global_state)}

    def local_loss(self, logits: torch.Tensor, labels: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        p = self.params
        private = ctx.model.private(ctx.batch)
        loss_p = p.alpha * F.cross_entropy(private, labels) + (1 - p.alpha) * kl(logits, private)
        loss_m = p.beta * F.cross_entropy(logits, labels) + (1 - p.beta) * kl(private, logits)
        return loss_p + loss_m

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        shared = [k for k in global_state if k.startswith(SHARED)]
        out = {**global_state, **weighted_average([u.state for u in updates], size_weights(updates), shared)}
        held = dict(server_state.held)  # each client keeps its private model; it is never averaged
        for u in updates:
            held[u.client] = {**held.get(u.client, {}), **{k: v.clone() for k, v in u.state.items() if k.startswith(PRIVATE)}}
        return out, server_state.updated(held=held)
