"""Moving tensors between a model's parameters and a state dict, and the LoRA rank operations on
them: what the executors, the round loop and the evaluator share (no fedcore imports: the floor)."""
from __future__ import annotations

import torch


@torch.no_grad()
def zero_beyond_rank(params: list[tuple[str, torch.nn.Parameter]], rank: int) -> None:
    """Zero LoRA factors past `rank` (rows of A, columns of B): a rank-r client in an r_max model.
    Zeros on both sides get zero gradients, so they stay zero through SGD and Adam steps."""
    for name, p in params:
        if "lora_A." in name:
            p[rank:] = 0
        elif "lora_B." in name:
            p[:, rank:] = 0


@torch.no_grad()
def lower_rank(params: list[tuple[str, torch.nn.Parameter]], old: int, new: int) -> None:
    """A client whose method lowered its rank from `old` to `new` (HetLoRA's pruning): its scale rises
    from alpha / old to alpha / new, so B is multiplied by new / old (its kept slots' product keeps
    its value) and the slots from `new` on are zeroed."""
    for name, p in params:
        if "lora_B." in name:
            p.mul_(new / old)
    zero_beyond_rank(params, new)


def set_lora_scaling(model: torch.nn.Module, value: float) -> None:
    """peft's per-layer scaling (alpha / r): set to the training client's alpha / r_k."""
    for m in model.modules():
        if isinstance(getattr(m, "scaling", None), dict) and hasattr(m, "lora_A"):
            for adapter in m.scaling:
                m.scaling[adapter] = value


@torch.no_grad()
def load_state(params: list[tuple[str, torch.nn.Parameter]], state: dict[str, torch.Tensor]) -> None:
    for name, p in params:
        p.copy_(state[name])


@torch.no_grad()
def load_fresh(params: list[tuple[str, torch.nn.Parameter]], state: dict[str, torch.Tensor]) -> None:
    """Point each parameter at a new copy of its state: one copy, after which the trained tensors can
    be handed over as a client's update without cloning them."""
    for name, p in params:
        p.data = state[name].to(p.device, p.dtype, copy=True)


def snapshot(params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params}


class FrozenDeltas:
    """Frozen parameters set to their initial value plus the server state's delta for them
    (ServerState.frozen_delta: FLoRA merges each round's stacked adapters into the base weights)."""

    def __init__(self, model: torch.nn.Module):
        self._params = dict(model.named_parameters())
        self._initial: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, deltas: dict[str, torch.Tensor]) -> None:
        for name, delta in deltas.items():
            if name not in self._initial:
                self._initial[name] = self._params[name].detach().clone()
            self._params[name].copy_(self._initial[name] + delta.to(self._params[name].dtype))
