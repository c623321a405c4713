"""Pure tensor operations on LoRA factors, shared by the federated LoRA methods.

Conventions (peft's): a layer's adapter is A [r, in] and B [out, r]; its update is s * B @ A with
s = lora_alpha / r. Every client's factors travel padded to the resident model's rank r_max, with
zeros beyond the client's own rank r_k. The global factors are stored at r_max with the resident
scale s_max = alpha / r_max. Heterogeneous-rank methods therefore aggregate *scaled* products
(s_k B_k A_k) and divide by the receiving client's s_k when they hand factors back.
"""
from __future__ import annotations

import math

import torch

A_TAG, B_TAG = "lora_A.", "lora_B."


def lora_layers(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """layer prefix -> (A key, B key), for every LoRA pair in a state dict."""
    out = {}
    for key in state:
        if A_TAG in key:
            prefix, rest = key.split(A_TAG, 1)
            b = f"{prefix}{B_TAG}{rest}"
            if b not in state:
                raise KeyError(f"LoRA factor {key} has no matching {b}")
            out[prefix] = (key, b)
    return out


def base_weight_key(prefix: str) -> str:
    """The frozen base weight under a peft LoRA layer prefix ('...query.' -> '...query.base_layer.weight')."""
    return f"{prefix}base_layer.weight"


def scale(alpha: float, r: int) -> float:
    return alpha / r


def product(A: torch.Tensor, B: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """s * B @ A in float64."""
    return s * (B.to(torch.float64) @ A.to(torch.float64))


def truncate(A: torch.Tensor, B: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first r ranks and zero the rest (shapes unchanged)."""
    A2, B2 = A.clone(), B.clone()
    A2[r:] = 0
    B2[:, r:] = 0
    return A2, B2


def svd_factors(delta: torch.Tensor, r: int, split: str = "B") -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (A [r, in], B [out, r]) with B @ A the best rank-r approximation of delta.
    split "B": all singular values in B (FlexLoRA's code); "sym": sqrt(Sigma) on each side."""
    U, S, Vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    k = min(r, S.numel())
    U, S, Vh = U[:, :k], S[:k], Vh[:k]
    if split == "B":
        A, B = Vh, U * S
    elif split == "sym":
        root = S.sqrt()
        A, B = root[:, None] * Vh, U * root
    else:
        raise ValueError(f"svd split {split!r}; allowed: B, sym")
    if k < r:  # delta narrower than r: pad with zeros
        A = torch.cat([A, A.new_zeros(r - k, A.shape[1])])
        B = torch.cat([B, B.new_zeros(B.shape[0], r - k)], dim=1)
    return A, B


def energy_fractions(delta: torch.Tensor, bounds: list[int], s2: torch.Tensor | None = None) -> list[float]:
    """Fraction of sum(sigma_i^2) in each rank partition (0, b1], (b1, b2], ... and beyond the last
    (s2: delta's squared singular values, when the caller has them already)."""
    s2 = torch.linalg.svdvals(delta.to(torch.float64)) ** 2 if s2 is None else s2
    total = float(s2.sum())
    if total == 0:
        return [math.nan] * (len(bounds) + 1)
    edges = [0, *bounds, s2.numel()]
    return [float(s2[lo:hi].sum()) / total for lo, hi in zip(edges[:-1], edges[1:])]


def effective_rank(delta: torch.Tensor, s2: torch.Tensor | None = None) -> float:
    """exp of the entropy of the normalised squared singular values (s2, if given: delta's)."""
    s2 = torch.linalg.svdvals(delta.to(torch.float64)) ** 2 if s2 is None else s2
    if float(s2.sum()) == 0:
        return math.nan
    p = s2 / s2.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def nbytes(state: dict[str, torch.Tensor], ranks_of: dict[str, int] | None = None) -> int:
    """Bytes of a state as sent: LoRA factors only up to the sender's rank (ranks_of: key -> r)."""
    total = 0
    for key, t in state.items():
        n = t.numel()
        if ranks_of and key in ranks_of:
            r, full = ranks_of[key], (t.shape[0] if A_TAG in key else t.shape[1])
            n = n * r // full
        total += n * t.element_size()
    return total


# --- helpers shared by the heterogeneous-rank methods ----------------------------------------
def resident_rank(state: dict[str, torch.Tensor]) -> int:
    """r_max: the rank every LoRA factor of the state is stored at."""
    a, _ = next(iter(lora_layers(state).values()))
    return state[a].shape[0]


def client_scale(alpha: float, rank: int | None, r_max: int) -> float:
    return alpha / (rank or r_max)


def for_client(global_state: dict[str, torch.Tensor], rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """The global factors as client `rank` receives them: B rescaled by s_max / s_k so that its
    product keeps its value under the client's scale, truncated to the client's rank."""
    r_max = resident_rank(global_state)
    ratio = scale(alpha, r_max) / scale(alpha, rank)
    out = dict(global_state)
    for a, b in lora_layers(global_state).values():
        out[a], out[b] = truncate(global_state[a], global_state[b] * ratio, rank)
    return out


def scaled_factor_average(updates, weights: torch.Tensor, alpha: float, r_max: int,
                          layers: dict[str, tuple[str, str]], fold: str = "B") -> dict[str, torch.Tensor]:
    """FedIT-style average of zero-padded factors, with each client's scale ratio c_k = s_k / s_max
    folded into its factors first, so that its product is counted at its true size.

    fold "B" (the default): A = sum_k w_k A_k, B = sum_k w_k c_k B_k. A client that returns what it
    was sent (B_k = B / c_k, by `for_client`) gives back exactly B and A inside the smallest rank:
    a round in which no client learns leaves the shared part of the update unchanged (weights
    summing to one). Rank slots beyond some clients' ranks shrink by the weight of the clients that
    hold them, in both factors: the rank collapse of zero-padding.
    fold "sym": both factors times sqrt(c_k). NOT a fixed point with mixed ranks: a no-op round
    multiplies the shared A by sum_k w_k sqrt(c_k) and B by sum_k w_k / sqrt(c_k), so the shared
    product grows by their product (> 1 by Cauchy-Schwarz) every round. Kept only as an explicit
    option for comparison. Both folds are plain averaging at equal ranks."""
    if fold not in ("B", "sym"):
        raise ValueError(f"fold {fold!r}; allowed: B, sym")
    s_max = scale(alpha, r_max)
    out = {}
    for a, b in layers.values():
        acc_a = torch.zeros_like(updates[0].state[a], dtype=torch.float64)
        acc_b = torch.zeros_like(updates[0].state[b], dtype=torch.float64)
        for w, u in zip(weights.tolist(), updates):
            c = client_scale(alpha, u.rank, r_max) / s_max
            ca, cb = (math.sqrt(c), math.sqrt(c)) if fold == "sym" else (1.0, c)
            acc_a.add_(u.state[a].to(torch.float64), alpha=w * ca)
            acc_b.add_(u.state[b].to(torch.float64), alpha=w * cb)
        out[a], out[b] = acc_a.to(updates[0].state[a].dtype), acc_b.to(updates[0].state[b].dtype)
    return out


def _device(updates) -> torch.device:
    return next(iter(updates[0].state.values())).device


def slot_weights(updates, weights: torch.Tensor, r_max: int) -> torch.Tensor:
    """[r_max, K]: for rank slot i, the weights w_k of the clients that hold it (r_k > i) renormalised
    to sum to one over them; a slot that no client of the round holds has a row of zeros."""
    ranks = torch.tensor([u.rank or r_max for u in updates])
    holds = (torch.arange(r_max)[:, None] < ranks[None, :]).to(torch.float64)
    w = holds * weights.to(torch.float64).cpu()[None, :]
    total = w.sum(dim=1, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(1e-300), w)  # on the CPU: callers move it


def holder_factor_average(updates, weights: torch.Tensor, alpha: float, r_max: int,
                          layers: dict[str, tuple[str, str]], current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each rank slot of A and B averaged over the clients that hold it (slot_weights), each client's
    scale ratio c_k = s_k / s_max folded into its B; a slot no client of the round holds keeps its
    value in `current` (the global state). Plain averaging at equal ranks. Unlike zero-padding, a
    slot is not diluted by the clients that lack it: a round in which no client learns hands back
    every slot, not only those inside the smallest rank."""
    s_max = scale(alpha, r_max)
    omega = slot_weights(updates, weights, r_max)  # [r_max, K]
    held = omega.sum(dim=1) > 0
    omega = omega.to(_device(updates))  # the products run where the factors are (a GPU in paper profiles)
    out = {}
    for a, b in layers.values():
        acc_a = torch.zeros_like(updates[0].state[a], dtype=torch.float64)
        acc_b = torch.zeros_like(updates[0].state[b], dtype=torch.float64)
        for k, u in enumerate(updates):
            c = client_scale(alpha, u.rank, r_max) / s_max
            acc_a += omega[:, k, None] * u.state[a].to(torch.float64)
            acc_b += (c * omega[:, k])[None, :] * u.state[b].to(torch.float64)
        if not held.all():  # only then is the global state read
            acc_a[~held] = current[a].to(torch.float64)[~held]
            acc_b[:, ~held] = current[b].to(torch.float64)[:, ~held]
        out[a], out[b] = acc_a.to(updates[0].state[a].dtype), acc_b.to(updates[0].state[b].dtype)
    return out


def holder_ideal(updates, weights: torch.Tensor, alpha: float, r_max: int, a: str, b: str,
                 current: dict[str, torch.Tensor]) -> torch.Tensor:
    """The update the clients hold, slot by slot: sum_i sum_k omega_ik s_k B_k[:, i] A_k[i, :] with the
    slot weights of slot_weights, plus s_max B_g[:, i] A_g[i, :] of the global state for a slot no
    client of the round holds (float64). sum_k w_k s_k B_k A_k at equal ranks."""
    omega = slot_weights(updates, weights, r_max)
    held = omega.sum(dim=1) > 0
    omega = omega.to(_device(updates))
    total = sum(product(u.state[a].to(torch.float64) * omega[:, k, None], u.state[b],
                        client_scale(alpha, u.rank, r_max)) for k, u in enumerate(updates))
    if not held.all():
        total = total + product(current[a][~held], current[b][:, ~held], scale(alpha, r_max))
    return total


def ideal_update(updates, weights: torch.Tensor, alpha: float, r_max: int, a: str, b: str) -> torch.Tensor:
    """sum_k w_k s_k B_k A_k of one layer (float64)."""
    return sum(w * product(u.state[a], u.state[b], client_scale(alpha, u.rank, r_max))
               for w, u in zip(weights.tolist(), updates))
