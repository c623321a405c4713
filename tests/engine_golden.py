"""What the engine computes, as recorded numbers: for every built-in method (on a LoRA model; with
mixed client ranks where it handles them; on the full TextCNN where it does not need LoRA; and with
the batched executor where that runs it) a short fixed-seed run's per-round metrics and a hash of
its final model (every tensor of the model's state: trained, frozen and buffers).

tests/golden/engine.json holds these as the engine computed them at commit ec7e59d, before the
engine's refactor (issue 18), recorded by this file's first version (which imported load_state from
fedcore.executors, where it was then); test_engine_golden.py checks that today's engine gives the same, bit
for bit. Re-record only on purpose, when a change is meant to change what a method computes:

    python -m tests.engine_golden > tests/golden/engine.json
"""
from __future__ import annotations

import hashlib
import json
import math
import sys

import torch

from fedcore.resolve import make_config
from fedcore.params import load_state
from fedcore.federation import Federation
from fedcore.methods import METHODS

# small but not degenerate: clients of different sizes, a sampled cohort, three local steps, evaluation
# every round, and a third round so that a round starts from an aggregated (not the initial) state
BASE = {"data.source": "synthetic:topics?n=200&test=60", "data.max_len": 16, "partition.num_clients": 4,
        "partition.alpha": 0.5, "clients_per_round": 3, "rounds": 3, "batch_size": 8, "max_local_steps": 3,
        "optimizer.name": "adamw", "optimizer.lr": 0.05, "torch_threads": 1, "seed": 5}
LORA = {"model.name": "tiny-bert", "model.lora.r": 4, "model.lora.alpha": 8, "model.encoder_dropout": 0.0,
        "model.lora.dropout": 0.0}
FULL = {"model.name": "textcnn", "model.embed_dim": 16, "model.num_filters": 8, "optimizer.name": "sgd",
        "optimizer.lr": 0.05}
MIXED = {"model.lora.ranks": [4, 2, 4, 1]}
TEACHER = {"teacher.name": "tiny-bert", "teacher.max_len": 16}
BATCHED = ("fedavg", "fedavgw", "fedit", "ffa_lora", "flora", "flexlora", "raflora", "lora_fair")


def cases() -> dict[str, dict]:
    """case name -> config overrides."""
    out = {}
    for name, m in METHODS.items():
        common = {**BASE, "method.name": name, **(TEACHER if m.needs_teacher else {})}
        out[f"{name}-lora"] = {**common, **LORA, "executor": "sequential"}
        if m.handles_mixed_ranks:
            out[f"{name}-mixed"] = {**common, **LORA, **MIXED, "executor": "sequential"}
        if not m.requires_lora:
            out[f"{name}-full"] = {**common, **FULL, "executor": "sequential"}
        if name in BATCHED:
            out[f"{name}-batched"] = {**common, **LORA, **(MIXED if m.handles_mixed_ranks else {}),
                                      "executor": "batched", "executor_clients": 2}
    return out


def model_hash(fed: Federation) -> str:
    """sha256 of every tensor of the model holding the final global state, in name order."""
    load_state(fed.params, fed.global_state)
    h = hashlib.sha256()
    for name, t in sorted(fed.model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_norm(fed: Federation) -> float:
    """The float64 sum of squares of every floating tensor: what is compared where bits cannot be."""
    load_state(fed.params, fed.global_state)
    return float(sum(t.double().pow(2).sum() for t in fed.model.state_dict().values() if t.is_floating_point()))


def run_case(overrides: dict) -> dict:
    fed = Federation(make_config({}, **overrides))
    history = fed.run()
    rounds = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in h.items() if "seconds" not in k}
              for h in history]
    return {"rounds": rounds, "model_sha256": model_hash(fed), "model_sq_norm": model_norm(fed)}


def record() -> dict:
    # the CPU kernels torch picks set the last bits of a float: a bit-for-bit comparison holds on one
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "cases": {name: run_case(over) for name, over in cases().items()}}


if __name__ == "__main__":
    json.dump(record(), sys.stdout, indent=0, sort_keys=True)
    sys.stdout.write("\n")
