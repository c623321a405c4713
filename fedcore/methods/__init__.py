"""Method registry: the names users type (DESIGN.md "Names users type")."""
from __future__ import annotations

from fedcore.methods.base import ClientUpdate, LocalContext, Method
from fedcore.methods.fedavg import FedAvg
from fedcore.methods.fed_lpfm import FedLPFM
from fedcore.methods.fedavgw import FedAvgW
from fedcore.methods.fedit import FedIT
from fedcore.methods.fedprox import FedProx
from fedcore.methods.fedpurel import FedPuReL
from fedcore.methods.ffa_lora import FFALoRA
from fedcore.methods.flexlora import FlexLoRA
from fedcore.methods.flora import FLoRA
from fedcore.methods.fml import FML
from fedcore.methods.hetlora import HetLoRA
from fedcore.methods.lora_fair import LoRAFAIR
from fedcore.methods.raflora import RaFLoRA

METHODS: dict[str, type[Method]] = {m.name: m for m in (FedAvg, FedProx, FedAvgW, FedIT, FFALoRA, FLoRA, FlexLoRA,
                                                        HetLoRA, RaFLoRA, LoRAFAIR, FedLPFM, FML, FedPuReL)}


def get_method(name: str, params: dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"method.name: unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")
    return METHODS[name](params or {})


__all__ = ["METHODS", "get_method", "Method", "ClientUpdate", "LocalContext"]
