"""Fed-LPFM (Wu et al., FL@FM-NeurIPS'23, "Leveraging Foundation Models to Improve Lightweight
Clients in Federated Learning"; docs/methods.md "Fed-LPFM", an assumption-heavy spec: the paper body was
not available). A lightweight student trained from scratch distils a frozen foundation model. The
paper's summary has lambda "controlling the balance between" cross-entropy and distillation, read
here as a convex mix, the default (`form: convex`, lambda in [0, 1]):

    L_k = (1 - lambda) * CE(y, f(x)) + lambda * tau^2 * KL( softmax(z_T(x) / tau) || softmax(f(x) / tau) )

and the additive form (docs/methods.md) on request (`form: additive`, lambda >= 0):

    L_k = CE(y, f(x)) + lambda * tau^2 * KL( ... )

both averaged over the batch. z_T is the teacher's logits over the training pool, computed once and
cached (fedcore/teacher.py): by default one zero-shot head for every client; `teacher.per_client`
and `teacher.finetune_epochs` give the paper's two teacher ablations (a backbone drawn per client, a
head fine-tuned on each client's data). The server is plain FedAvg; only the student is evaluated.
lambda 0 is FedAvg bit for bit in both forms (the distillation term is not even computed)."""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from fedcore.methods.base import LocalContext
from fedcore.methods.fedavg import FedAvg


class FedLPFMParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    # convex: (1 - lambda) CE + lambda tau^2 KL; additive: CE + lambda tau^2 KL (declared before
    # lambda, whose range it sets)
    form: Literal["convex", "additive"] = "convex"
    lam: float = Field(0.5, ge=0, alias="lambda")  # weight of the distillation term
    tau: float = Field(2.0, gt=0)  # distillation temperature

    @field_validator("lam")
    @classmethod
    def _convex_weight(cls, v: float, info: ValidationInfo) -> float:
        if info.data.get("form") == "convex" and v > 1:
            # a custom error, so that the line reads without pydantic's "Value error," prefix
            raise PydanticCustomError(
                "convex_lambda", "above 1 with form 'convex', where (1 - lambda) would weigh the cross-entropy "
                "negatively; allowed: 0 <= lambda <= 1, or form 'additive' for larger weights")
        return v


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), mean over the batch."""
    log_p_t = F.log_softmax(teacher / tau, dim=-1)
    log_p_s = F.log_softmax(student / tau, dim=-1)
    return tau ** 2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


def lpfm_loss(ce: torch.Tensor, kd: torch.Tensor, lam: float, form: str) -> torch.Tensor:
    """The two forms' mix of a cross-entropy and a (tau^2-scaled) distillation term."""
    return (1 - lam) * ce + lam * kd if form == "convex" else ce + lam * kd


class FedLPFM(FedAvg):
    name = "fed_lpfm"
    summary = ("Fed-LPFM: FedAvg of a lightweight student, local (1 - lambda) CE + lambda tau^2 KL(teacher || "
               "student) (form convex; additive: CE + lambda tau^2 KL)")
    Params = FedLPFMParams
    needs_teacher = True
    # the training rows' teacher logits are this method's targets, so the per-client teacher options
    # (teacher.per_client, teacher.finetune_epochs) are meaningful for it (fedcore/config.py refuses them elsewhere)
    distils_client_teachers: ClassVar[bool] = True

    def local_loss(self, logits: torch.Tensor, labels: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        p = self.params
        if p.lam == 0:
            return F.cross_entropy(logits, labels)
        kd = distillation_loss(logits, ctx.batch["teacher_logits"].to(logits.dtype), p.tau)
        if p.form == "convex" and p.lam == 1:  # pure distillation: no 0 * CE (a non-finite CE would poison it)
            return kd
        return lpfm_loss(F.cross_entropy(logits, labels), kd, p.lam, p.form)
