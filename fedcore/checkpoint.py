"""A run's state between rounds (`RunState`), and saving and restoring it with the RNG states, so
that a restored run continues exactly as the uninterrupted one would."""
from __future__ import annotations

import random
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcore.methods.base import NoRecord, ServerState, State

# 2: the server state as ServerState's fields; 1 (still read): one flat dict with the engine's keys
# "ranks", "frozen_delta/<param>" and "client/<k>/<name>" beside the method's own
STATE_VERSION = 2


@dataclass
class RunState:
    """What the rounds so far have produced: everything the next round depends on."""
    round: int
    global_state: State  # the global trainable tensors
    server_state: ServerState
    history: list[dict[str, float]] = field(default_factory=list)  # each round's metrics
    last_eval: dict[str, float] | None = None  # the last evaluation's metrics, repeated until the next


def to_dict(state: RunState, fingerprint: str) -> dict:
    return {
        "version": STATE_VERSION,
        "fingerprint": fingerprint,
        "round": state.round,
        # on the CPU, so that a state saved on a GPU node restores anywhere
        "global": {k: v.detach().cpu().clone() for k, v in state.global_state.items()},
        "server": {k: v.detach().cpu().clone() for k, v in flat_server(state.server_state).items()},
        "history": [dict(h) for h in state.history],
        "last_eval": dict(state.last_eval) if state.last_eval else {},
        "rng": {"torch": torch.get_rng_state(), "numpy": torch.as_tensor(np.random.get_state()[1].astype(np.int64)),
                "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])},
    }


def from_dict(sd: dict, fingerprint: str, weights: set[str], device: str, record: type = NoRecord) -> RunState:
    """The state in `sd` (checked against the run's config fingerprint and weight names), with the
    process's RNG states set to those saved; the method's own server part as its `record` class."""
    if sd.get("version") not in (1, STATE_VERSION):
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
                    server_state=server_from_flat({k: v.to(device) for k, v in sd["server"].items()}, sd["version"],
                                                  record),
                    history=[dict(h) for h in sd["history"]], last_eval=dict(sd["last_eval"]) or None)


def flat_server(server: ServerState) -> dict[str, torch.Tensor]:
    """The server state as one dict of tensors (torch.load(weights_only=True) reads plain dicts)."""
    out = {f"own/{k}": v for k, v in record_tensors(server.own).items()}
    if server.ranks is not None:
        out["ranks"] = server.ranks
    out.update({f"frozen_delta/{k}": v for k, v in server.frozen_delta.items()})
    out.update({f"held/{c}/{k}": v for c, held in server.held.items() for k, v in held.items()})
    return out


def record_tensors(record: Any) -> dict[str, torch.Tensor]:
    """A method's record as tensors: a number as a 0-d tensor (bool, int64 or float64), None left out."""
    out = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, bool | int | float):
            dtype = torch.bool if isinstance(value, bool) else torch.int64 if isinstance(value, int) else torch.float64
            value = torch.tensor(value, dtype=dtype)
        elif value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{type(record).__name__}.{f.name} is a {type(value).__name__}; a method's record holds "
                            f"tensors, bools, ints, floats or None (docs/plugins.md)")
        if value is not None:
            out[f.name] = value
    return out


def _number_kind(hint: Any) -> type | None:
    """bool, int or float where a field is typed so (or as that or None); None for a tensor field."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_args(hint) else [hint]
    return next((k for k in (bool, int, float) if args == [k]), None)


def record_of(record: type, tensors: dict[str, torch.Tensor]) -> Any:
    """The record `record_tensors` saved (a field it lacks keeps its default): a field typed bool, int
    or float gets its number back. The files of runs from before the typed record hold the same
    tensors under the same names (FLoRA's and LoRA-FAIR's round, HetLoRA's pruned_norm)."""
    hints = typing.get_type_hints(record)
    names = {f.name for f in fields(record)}
    unknown = set(tensors) - names
    if unknown:
        raise ValueError(f"the saved server state holds {sorted(unknown)}, which {record.__name__} does not have")
    values = {}
    for name, value in tensors.items():
        kind = _number_kind(hints.get(name))
        values[name] = kind(value.item()) if kind is not None else value
    return record(**values)


def server_from_flat(flat: dict[str, torch.Tensor], version: int, record: type = NoRecord) -> ServerState:
    own, frozen, held, ranks = {}, {}, {}, flat.get("ranks")
    client_prefix = "held/" if version >= 2 else "client/"
    for key, value in flat.items():
        if key.startswith("frozen_delta/"):
            frozen[key.split("/", 1)[1]] = value
        elif key.startswith(client_prefix):
            _, client, name = key.split("/", 2)
            held.setdefault(int(client), {})[name] = value
        elif key.startswith("own/"):
            own[key.split("/", 1)[1]] = value
        elif version == 1 and key != "ranks":
            own[key] = value
    return ServerState(own=record_of(record, own), ranks=ranks, frozen_delta=frozen, held=held)


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
