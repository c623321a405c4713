"""LoRA-FAIR (Bian, Wang, Zhang, Xu, ICCV 2025, "Federated LoRA Fine-Tuning with Aggregation and
Initialization Refinement"; docs/methods.md "LoRA-FAIR"): the server averages the factors (A_bar, B_bar, as
FedIT at one rank; mixed ranks below), and corrects B with a residual found by

    dB* = argmin_dB  sum_l [1 - cos(dW_l, (B_bar_l + dB_l) A_bar_l)] + lambda * R(dB),
    dW_l = sum_k p_k s_k B_k A_k   (the ideal update),  R = sum_l ||dB_l||_F  (or its square),

with SGD on the server (server_steps, server_lr; early stop when the objective moves less than
tol for `patience` steps; the best iterate is kept, so the objective never rises). Clients start
the next round from (A_bar, B_bar + dB*) (Avg-Initial); the base weights are not touched. Options:
delta_init zeros (the paper's reading) or xavier (the SpecTraL fork; drawn afresh every round, from
the run's seed and the round), cos_mode flat or columnwise (cosine per input column, averaged: the
fork's F.cosine_similarity(dim=0)), reg norm or squared.
Reported every round: the cosine to the ideal update of the plain average and of the corrected
one, and the cosine between B_bar + dB* and B_bar.

Mixed ranks (not in the paper, which uses one rank): each rank slot of A_bar, B_bar and of the ideal
update is averaged over the clients that hold it, their weights renormalised over them, each
client's scale ratio s_k / s_max folded into B (lora.holder_factor_average, lora.holder_ideal; a
slot no client of the round holds keeps the global's). At one rank this is exactly the paper's
FedIT average and ideal update. Zero-padding instead (the SpecTraL fork) would make the average
(slot weights W_i^2) and the ideal (W_i) disagree even when no client learns, and the residual,
which aims at the direction of the whole update, would then move the part every client holds
(measured: 10% a round for ranks 1/2/4/8). With holder averaging a round in which no client learns
gives B_bar A_bar = ideal, the residual stays zero, and the whole update comes back unchanged.

Units: dB is solved on the raw factor B_bar (the resident model's B, at its scale
s_max = alpha / r_max), as the paper writes it and the SpecTraL fork codes it, not on s_max * B_bar.
The cosine term does not see the scale, so the solution depends on the clients' raw factors only:
lambda and server_lr mean the same whatever alpha is. (Solving on s_max * B_bar would make lambda
act as lambda * s_max, and the step as server_lr / s_max^2, in raw units.)"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from fedcore import lora
from fedcore.seeds import Purpose, derive_seed
from fedcore.methods.base import ClientUpdate, ServerState, State, as_reported, size_weights
from fedcore.methods.lora_common import LoRAMethod


class LoRAFAIRParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    lam: float = Field(0.01, ge=0, alias="lambda")  # the paper's lambda (the fork uses 1.0)
    server_steps: int = Field(200, ge=0)
    server_lr: float = Field(0.01, gt=0)
    delta_init: Literal["zeros", "xavier"] = "zeros"
    cos_mode: Literal["flat", "columnwise"] = "flat"
    reg: Literal["norm", "squared"] = "norm"
    tol: float = Field(1e-6, ge=0)
    patience: int = Field(5, ge=1)


def cosine(x: torch.Tensor, y: torch.Tensor, mode: str = "flat") -> torch.Tensor:
    if mode == "columnwise":
        return F.cosine_similarity(x, y, dim=0).mean()
    return F.cosine_similarity(x.flatten(), y.flatten(), dim=0)


def objective(ideal, B_bar, A_bar, delta, lam: float, mode: str, reg: str) -> torch.Tensor:
    total = 0
    for key in ideal:
        total = total + 1 - cosine(ideal[key], (B_bar[key] + delta[key]) @ A_bar[key], mode)
        norm = torch.linalg.matrix_norm(delta[key])
        total = total + lam * (norm ** 2 if reg == "squared" else norm)
    return total


def solve_residual(ideal: dict[str, torch.Tensor], B_bar: dict[str, torch.Tensor], A_bar: dict[str, torch.Tensor],
                   p: LoRAFAIRParams, generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """dB* per layer (float64) and the objective at the start and at the returned iterate."""
    delta = {}
    for key, B in B_bar.items():
        d = torch.zeros_like(B, dtype=torch.float64)
        if p.delta_init == "xavier":
            bound = (6 / (B.shape[0] + B.shape[1])) ** 0.5
            # drawn on the CPU (the generator's device: the same draw on any machine), then moved to B's
            d = ((torch.rand(B.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound).to(B.device)
        delta[key] = d.requires_grad_(True)
    opt = torch.optim.SGD(list(delta.values()), lr=p.server_lr)
    with torch.no_grad():
        start = float(objective(ideal, B_bar, A_bar, delta, p.lam, p.cos_mode, p.reg))
    best, best_delta, last, calm, steps = start, {k: v.detach().clone() for k, v in delta.items()}, start, 0, 0
    for steps in range(1, p.server_steps + 1):
        opt.zero_grad()
        loss = objective(ideal, B_bar, A_bar, delta, p.lam, p.cos_mode, p.reg)
        loss.backward()
        opt.step()
        with torch.no_grad():
            now = float(objective(ideal, B_bar, A_bar, delta, p.lam, p.cos_mode, p.reg))
        if now < best:
            best, best_delta = now, {k: v.detach().clone() for k, v in delta.items()}
        calm = calm + 1 if abs(last - now) < p.tol else 0
        last = now
        if calm >= p.patience:
            break
    return best_delta, {"server_objective_start": start, "server_objective_end": best, "server_steps_run": float(steps)}


@dataclass(frozen=True)
class LoRAFAIRRecord:
    round: int = 0  # the aggregations so far (seeds each round's server draws)


class LoRAFAIR(LoRAMethod):
    name = "lora_fair"
    summary = ("LoRA-FAIR: FedIT averages (mixed ranks: each slot over its holders) plus a server residual on B "
               "towards the ideal update (cosine + lambda norm)")
    Params = LoRAFAIRParams
    Record = LoRAFAIRRecord

    def aggregate(self, global_state: State, server_state: ServerState,
                  updates: list[ClientUpdate]) -> tuple[State, ServerState]:
        layers, r_max, alpha = self.layout(updates)
        weights = size_weights(updates)
        averaged = lora.holder_factor_average(updates, weights, alpha, r_max, layers, global_state)
        ideal = {p: lora.holder_ideal(updates, weights, alpha, r_max, a, b, global_state) for p, (a, b) in layers.items()}
        A_bar = {p: averaged[a].to(torch.float64) for p, (a, b) in layers.items()}
        B_bar = {p: averaged[b].to(torch.float64) for p, (a, b) in layers.items()}  # raw, at the resident scale
        round_ = self.own(server_state).round + 1
        with torch.enable_grad():
            delta, stats = solve_residual(ideal, B_bar, A_bar, self.params, self.generator(round_))
        out = self.head_average(updates)
        cos_avg, cos_fixed, cos_b = [], [], []
        for p, (a, b) in layers.items():
            B_new = B_bar[p] + delta[p]
            cos_avg.append(float(cosine(ideal[p], B_bar[p] @ A_bar[p])))
            cos_fixed.append(float(cosine(ideal[p], B_new @ A_bar[p])))
            cos_b.append(float(cosine(B_new, B_bar[p])))
            out[a], out[b] = averaged[a], B_new.to(averaged[b].dtype)
        metrics = {"cos_ideal_avg": sum(cos_avg) / len(cos_avg), "cos_ideal_corrected": sum(cos_fixed) / len(cos_fixed),
                   "cos_Bprime_Bbar": sum(cos_b) / len(cos_b), **stats}
        return out, server_state.updated(own=LoRAFAIRRecord(round_),
                                         reported={k: as_reported(v) for k, v in metrics.items()})

    def generator(self, round_: int) -> torch.Generator:
        """The server's draws of one round (delta_init xavier): a fresh start every round, the same one
        when a round is run again (a resumed run, a re-run with the same seed)."""
        return torch.Generator().manual_seed(derive_seed(self.seed, round_, 0, Purpose.LORA_FAIR_ROUND))
