"""Method registry: the names users type (docs/methods.md).

METHODS holds the built-in methods only, so code and tests that iterate it see exactly these. A
name outside it is a plugin (fedcore/methods/plugins.py, docs/plugins.md): resolve any name with
`method_class`, which loads a plugin only when a config names it.
"""
from __future__ import annotations

from fedcore.methods import plugins
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


def _registry(*classes: type[Method]) -> dict[str, type[Method]]:
    # the checks a plugin passes, applied to the built-ins too: one set of rules for every method
    for cls in classes:
        reason = plugins.check_method_class(cls, f"{cls.__module__}.{cls.__qualname__}")
        if reason is not None:
            raise TypeError(f"built-in method: {reason}")
    return {m.name: m for m in classes}


METHODS: dict[str, type[Method]] = _registry(FedAvg, FedProx, FedAvgW, FedIT, FFALoRA, FLoRA, FlexLoRA,
                                             HetLoRA, RaFLoRA, LoRAFAIR, FedLPFM, FML, FedPuReL)


def method_class(name: str) -> type[Method]:
    """The class a config's method.name means: a built-in, a plugin's entry point, or 'module:Class'.
    ValueError (one 'method.name: ...' line) for an unknown name or a plugin that cannot be used."""
    if name in METHODS:
        return METHODS[name]
    return plugins.resolve(name, METHODS)


def get_method(name: str, params: dict | None = None) -> Method:
    return method_class(name)(params or {})


def list_methods(extra: str | None = None) -> list[plugins.Listed]:
    """Every method --list-methods shows: the built-ins, then each plugin entry point (a broken one
    with its reason), then `extra` if it names one more (a 'module:Class')."""
    rows = [plugins.Listed(n, "built-in", cls=m) for n, m in METHODS.items()]
    rows += plugins.list_plugins(METHODS)
    if extra is not None and extra not in {r.name for r in rows}:
        try:
            rows.append(plugins.Listed(extra, "module:Class", cls=method_class(extra)))
        except plugins.PluginError as err:
            rows.append(plugins.Listed(extra, "module:Class", reason=err.reason))
    return rows


__all__ = ["METHODS", "method_class", "get_method", "list_methods", "Method", "ClientUpdate", "LocalContext"]
