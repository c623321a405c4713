"""A run's state between rounds (`RunState`), and saving and restoring it with the RNG states, so
that a restored run continues exactly as the uninterrupted one would."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedcore.methods.base import State

STATE_VERSION = 1


@dataclass
class RunState:
    """What the rounds so far have produced: everything the next round depends on."""
    round: int
    global_state: State  # the global trainable tensors
    server_state: State  # the method's server state (with the engine's keys: ranks, client-held, ...)
    history: list[dict[str, float]] = field(default_factory=list)  # each round's metrics
    last_eval: dict[str, float] | None = None  # the last evaluation's metrics, repeated until the next


def to_dict(state: RunState, fingerprint: str) -> dict:
    return {
        "version": STATE_VERSION,
        "fingerprint": fingerprint,
        "round": state.round,
        # on the CPU, so that a state saved on a GPU node restores anywhere
        "global": {k: v.detach().cpu().clone() for k, v in state.global_state.items()},
        "server": {k: v.detach().cpu().clone() for k, v in state.server_state.items()},
        "history": [dict(h) for h in state.history],
        "last_eval": dict(state.last_eval) if state.last_eval else {},
        "rng": {"torch": torch.get_rng_state(), "numpy": torch.as_tensor(np.random.get_state()[1].astype(np.int64)),
                "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])},
    }


def from_dict(sd: dict, fingerprint: str, weights: set[str], device: str) -> RunState:
    """The state in `sd` (checked against the run's config fingerprint and weight names), with the
    process's RNG states set to those saved."""
    if sd.get("version") != STATE_VERSION:
        raise ValueError(f"state version {sd.get('version')} is not {STATE_VERSION}")
    if sd["fingerprint"] != fingerprint:
        raise ValueError("this state was saved by a run with a different config; refusing to restore it")
    missing = weights - set(sd["global"])
    if missing:
        raise ValueError(f"state lacks weights {sorted(missing)[:3]}")
    rng = sd["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(rng["python"]), None))
    return RunState(round=int(sd["round"]), global_state={k: v.to(device) for k, v in sd["global"].items()},
                    server_state={k: v.to(device) for k, v in sd["server"].items()},
                    history=[dict(h) for h in sd["history"]], last_eval=dict(sd["last_eval"]) or None)


def save(path: str | Path, sd: dict) -> Path:
    """Write atomically: a reader never sees half a state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(sd, tmp)
    tmp.replace(path)
    return path


def load(path: str | Path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=True)
