"""Fed-LPFM (Wu et al., FL@FM-NeurIPS'23, "Leveraging Foundation Models to Improve Lightweight
Clients in Federated Learning"; METHODS.md 2.2, an assumption-heavy spec: the paper body was not
available). A lightweight student trained from scratch distils a frozen zero-shot foundation model:

    L_k = CE(y, f(x)) + lambda * tau^2 * KL( softmax(z_T(x) / tau) || softmax(f(x) / tau) )

averaged over the batch, with z_T the teacher's zero-shot logits, computed once per dataset and
cached (fedcore/teacher.py); the server is plain FedAvg. Only the student is ever evaluated."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from fedcore.methods.base import LocalContext
from fedcore.methods.fedavg import FedAvg


class FedLPFMParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    lam: float = Field(1.0, ge=0, alias="lambda")  # weight of the distillation term
    tau: float = Field(2.0, gt=0)  # distillation temperature


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), mean over the batch."""
    log_p_t = F.log_softmax(teacher / tau, dim=-1)
    log_p_s = F.log_softmax(student / tau, dim=-1)
    return tau ** 2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


class FedLPFM(FedAvg):
    name = "fed_lpfm"
    summary = "Fed-LPFM: FedAvg of a lightweight student, local CE + lambda tau^2 KL(zero-shot teacher || student)"
    Params = FedLPFMParams
    needs_teacher = True

    def local_loss(self, logits: torch.Tensor, labels: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels)
        if self.params.lam == 0:
            return loss
        teacher = ctx.batch["teacher_logits"].to(logits.dtype)
        return loss + self.params.lam * distillation_loss(logits, teacher, self.params.tau)
