"""FedPuReL (Hou et al., CVPR 2026, "Fine-Tuning Impairs the Balancedness of Foundation Models in
Long-tailed Personalized Federated Learning"; docs/methods.md "FedPuReL", code shihaohou/FedPuReL).

Stage 1, the shared global branch (LoRA on the foundation model, whose zero-shot head is the
balanced prior). Per batch, with f the model's logits and z the cached zero-shot logits:

    g_task  = grad CE(y, f),   g_align = grad KL(softmax(z/tau_z) || softmax(f/tau_f))   (TKL, Eq. 5)
    per parameter tensor: g_task projected off g_align where <g_task, g_align> < 0          (Eq. 7)

and only the purified task gradient is applied (fedcore/alignment.py). The server averages the
LoRA factors (and any trainable head) with weights n_k (FedIT's aggregation, A and B separately).

Stage 2, residual personalization, after each aggregation, for every client of the round: the
just-aggregated global branch is frozen (logits l_G, eval mode) and the client's private branch
(its own copy of the trainable tensors, kept by the client across rounds) is trained for
`personal_epochs` with a fresh SGD (lr `personal_lr`, no momentum) on

    (1 - lambda) CE(y, l_G + l_P) + lambda CE(y, l_P)

The personalized model predicts l_G + l_P on the client's local test split; the global model alone
is scored on the balanced test set. The method says how stage 2 trains (`personal_stage`,
`personal_loss`, `personal_logits` below); the engine runs it for each client of the round and
scores the personalized models (`personalizes`); a client never sampled keeps its initial private
branch.

Paper vs code (docs/methods.md): lambda 0.9 is the paper's default (the code's is 0.99); the code
trains all clients in round 0 and shares one SGD optimizer (with momentum) across clients and
rounds, while here every client-round starts a fresh optimizer, as the paper describes.
`align: kl` is the paper's ablation (plain KL at temperature 1); `strength` 0 turns purification
off (plain fine-tuning plus stage 2).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedcore.alignment import plain_kl, purify, tkl_align_loss
from fedcore.methods.base import LocalContext, PersonalStage
from fedcore.methods.fedit import FedIT


class FedPuReLParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    lam: float = Field(0.9, ge=0, le=1, alias="lambda")  # weight of the private-only CE in stage 2
    strength: float = Field(1.0, ge=0, le=1)  # projection strength (the code's lambda_proj)
    align: Literal["tkl", "kl"] = "tkl"  # kl: the paper's ablation, plain KL at temperature 1
    tau_min: float = Field(0.05, gt=0)
    tau_max: float = Field(20.0, gt=0)
    bisect_steps: int = Field(20, ge=1, le=60)
    personal_lr: float = Field(1e-3, gt=0)
    personal_epochs: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _bracket(self) -> "FedPuReLParams":
        if self.tau_min >= self.tau_max:
            raise ValueError(f"tau_min {self.tau_min} must be below tau_max {self.tau_max}")
        return self


class FedPuReL(FedIT):
    name = "fedpurel"
    summary = ("FedPuReL: LoRA task gradient purified against TKL alignment with the zero-shot prior, FedAvg; "
               "then a private residual branch per client (global + private logits)")
    Params = FedPuReLParams
    needs_teacher = True
    personalizes = True
    handles_mixed_ranks = False
    mixed_ranks_refusal = "its private branch trains beside the global one at one rank"

    def align_loss(self, logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.align == "kl":
            return plain_kl(logits, teacher)
        return tkl_align_loss(logits, teacher, p.tau_min, p.tau_max, p.bisect_steps)

    def on_local_start(self, ctx: LocalContext) -> None:
        ctx.scratch.update(tensors=0, conflicts=0)

    def local_loss(self, logits: torch.Tensor, labels: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        if self.params.strength > 0:
            # the alignment gradient, kept aside: it defines the forbidden direction, never the step
            params = [p for _, p in ctx.params if p.requires_grad]
            align = self.align_loss(logits, ctx.batch["teacher_logits"])
            ctx.scratch["g_align"] = torch.autograd.grad(align, params, retain_graph=True, allow_unused=True)
        return F.cross_entropy(logits, labels)

    def after_backward(self, ctx: LocalContext) -> None:
        g_align = ctx.scratch.pop("g_align", None)
        if g_align is None:
            return
        for p, ga in zip((p for _, p in ctx.params if p.requires_grad), g_align):
            if p.grad is None or ga is None:
                continue
            purified, conflicted = purify(p.grad, ga, self.params.strength)
            if conflicted:
                p.grad.copy_(purified)
            ctx.scratch["tensors"] += 1
            ctx.scratch["conflicts"] += int(conflicted)

    def on_local_end(self, ctx: LocalContext) -> None:
        if ctx.scratch.get("tensors"):
            ctx.reported["purified_fraction"] = ctx.scratch["conflicts"] / ctx.scratch["tensors"]

    # --- stage 2: residual personalization ---------------------------------------------------------
    def personal_stage(self) -> PersonalStage:
        # a fresh SGD without momentum for every client and round, as the paper describes (its code
        # shares one optimizer with momentum across clients and rounds)
        return PersonalStage(lr=self.params.personal_lr, epochs=self.params.personal_epochs)

    def personal_loss(self, global_logits: torch.Tensor, private_logits: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
        lam = self.params.lam
        return ((1 - lam) * F.cross_entropy(global_logits.to(private_logits.dtype) + private_logits, labels)
                + lam * F.cross_entropy(private_logits, labels))
