"""Aligning a fine-tuned model with its zero-shot prior (FedPuReL, docs/methods.md "FedPuReL").

Temperature-aligned KL (TKL). A fine-tuned model's logits f and the zero-shot logits z of a sample
are softened to the same entropy before they are compared, so that the comparison measures how the
class ranking moved, not how confident either model is:

    H* = (H(softmax(f)) + H(softmax(z))) / 2,   tau_f, tau_z with H(softmax(f / tau_f)) = H*, likewise z

Entropy grows with the temperature, so each tau is found per sample by bisection on
[tau_min, tau_max] (20 halvings in the paper's code); a target outside the reachable range ends
at a bracket end. The temperatures are constants (no gradient flows through the search).
The paper's analysis metric is TKL(x) = KL(softmax(f / tau_f) || softmax(z / tau_z)); the training
alignment loss puts the zero-shot distribution first, KL(softmax(z / tau_z) || softmax(f / tau_f)),
without a tau^2 factor. `plain_kl` (tau = 1 on both sides) is the paper's ablation.

Gradient purification. Per parameter tensor, the task gradient is projected off the alignment
gradient where they conflict:

    g~ = g                                  if <g, g_a> >= 0
    g~ = g - strength <g, g_a> / |g_a|^2 g_a  otherwise

strength 1 is the paper (the result is orthogonal to g_a); the alignment gradient itself is never
applied, it only marks the forbidden direction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def entropy(logits: torch.Tensor, tau: torch.Tensor | float = 1.0) -> torch.Tensor:
    """H(softmax(logits / tau)) per row (tau a scalar or one temperature per row)."""
    if isinstance(tau, torch.Tensor) and tau.dim() == 1:
        tau = tau.unsqueeze(-1)
    log_p = F.log_softmax(logits / tau, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


@torch.no_grad()
def match_temperature(logits: torch.Tensor, target: torch.Tensor, tau_min: float = 0.05, tau_max: float = 20.0,
                      steps: int = 20) -> torch.Tensor:
    """Per row, the temperature whose softened distribution has entropy `target` (bisection)."""
    lo = torch.full(target.shape, tau_min, dtype=logits.dtype, device=logits.device)
    hi = torch.full_like(lo, tau_max)
    for _ in range(steps):
        mid = (lo + hi) / 2
        above = entropy(logits, mid) > target
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    return (lo + hi) / 2


@torch.no_grad()
def aligned_temperatures(f: torch.Tensor, z: torch.Tensor, tau_min: float = 0.05, tau_max: float = 20.0,
                         steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau_f, tau_z): per-sample temperatures giving both the mean of their entropies at tau 1."""
    f, z = f.detach(), z.detach().to(f.dtype)
    target = (entropy(f) + entropy(z)) / 2
    return (match_temperature(f, target, tau_min, tau_max, steps),
            match_temperature(z, target, tau_min, tau_max, steps))


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def tkl_align_loss(f: torch.Tensor, z: torch.Tensor, tau_min: float = 0.05, tau_max: float = 20.0,
                   steps: int = 20) -> torch.Tensor:
    """The training alignment loss: mean over the batch of KL(softmax(z/tau_z) || softmax(f/tau_f))."""
    z = z.to(f.dtype)
    tau_f, tau_z = aligned_temperatures(f, z, tau_min, tau_max, steps)
    return _kl(F.log_softmax(z / tau_z.unsqueeze(-1), -1), F.log_softmax(f / tau_f.unsqueeze(-1), -1)).mean()


def plain_kl(f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The ablation: mean over the batch of KL(softmax(z) || softmax(f)) at temperature 1."""
    return _kl(F.log_softmax(z.to(f.dtype), -1), F.log_softmax(f, -1)).mean()


@torch.no_grad()
def tkl(f: torch.Tensor, z: torch.Tensor, tau_min: float = 0.05, tau_max: float = 20.0,
        steps: int = 20) -> torch.Tensor:
    """The paper's analysis metric per sample: KL(softmax(f/tau_f) || softmax(z/tau_z))."""
    z = z.to(f.dtype)
    tau_f, tau_z = aligned_temperatures(f, z, tau_min, tau_max, steps)
    return _kl(F.log_softmax(f / tau_f.unsqueeze(-1), -1), F.log_softmax(z / tau_z.unsqueeze(-1), -1))


@torch.no_grad()
def purify(g_task: torch.Tensor, g_align: torch.Tensor, strength: float = 1.0) -> tuple[torch.Tensor, bool]:
    """(purified task gradient, whether it conflicted): the projection above, for one tensor."""
    dot = torch.dot(g_task.flatten().to(torch.float64), g_align.flatten().to(torch.float64))
    if not dot < 0:
        return g_task, False
    norm2 = torch.dot(g_align.flatten().to(torch.float64), g_align.flatten().to(torch.float64))
    coef = (strength * dot / norm2).to(g_task.dtype)
    return g_task - coef * g_align, True
