"""`precision: bf16`: forward passes under bfloat16 autocast in local training (both executors) and
evaluation, with float32 weights, gradients, optimizer state and aggregation (run on the CPU here;
the GPU is where it pays)."""
from __future__ import annotations

import pytest
import torch

from fedcore.executors import BatchedLoRAExecutor
from fedcore.config import ConfigError
from fedcore.resolve import make_config
from fedcore.federation import Federation

BASE = {"data": {"source": "synthetic:topics?n=300&test=80", "max_len": 16},
        "partition": {"num_clients": 4, "alpha": 1.0}, "eval": {"protocol": "class_filtered"},
        "model": {"name": "tiny-bert", "encoder_dropout": 0.0, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "optimizer": {"name": "adamw", "lr": 5e-3}, "batch_size": 8, "rounds": 1, "torch_threads": 1,
        "executor": "sequential", "method": {"name": "fedit"}}


def linear_output_dtypes(model: torch.nn.Module) -> tuple[set, list]:
    seen: set = set()
    handles = [m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
               for m in model.modules() if type(m) is torch.nn.Linear]
    return seen, handles


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_float32_state():
    feds = {p: Federation(make_config(BASE, precision=p)) for p in ("fp32", "bf16")}
    updates = {}
    for p, fed in feds.items():
        seen, handles = linear_output_dtypes(fed.model)
        updates[p] = fed.train_cohort(fed.sample_clients(1), 1)
        for h in handles:
            h.remove()
        assert seen == ({torch.bfloat16} if p == "bf16" else {torch.float32}), p
    start = feds["fp32"].global_state
    for a, b in zip(updates["fp32"], updates["bf16"]):
        assert all(t.dtype == torch.float32 for t in b.state.values())
        moved = torch.cat([(a.state[n] - start[n]).flatten() for n in a.state])
        apart = torch.cat([(a.state[n] - b.state[n]).flatten() for n in a.state])
        # bfloat16 rounding changes the update, by a few percent of how far the client moved
        assert 0 < float(apart.norm()) < 0.25 * float(moved.norm())
        assert a.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], rel=2e-2)
    fed = feds["bf16"]
    fed.run_round()
    assert all(v.dtype == torch.float32 for v in fed.global_state.values())
    seen, handles = linear_output_dtypes(fed.model)
    logits = fed.logits(fed.data.test_inputs)
    assert seen == {torch.bfloat16} and logits.dtype == torch.float32  # evaluation too, returned as float32


def test_bf16_batched_executor_follows_the_bf16_sequential_one():
    fed = Federation(make_config(BASE, precision="bf16"))
    cohort = fed.sample_clients(1)
    sequential = fed.train_cohort(cohort, 1)
    seen, handles = linear_output_dtypes(fed.model)
    batched = BatchedLoRAExecutor(fed.resident).run(fed.resident, fed.plan(cohort), 1, fed.server_state)
    assert torch.bfloat16 in seen
    for s, b in zip(sequential, batched):
        for name in s.state:  # bfloat16 products over a bigger batch round differently: a looser tolerance
            assert torch.allclose(s.state[name], b.state[name], atol=2e-3, rtol=1e-2), (s.client, name)


def test_precision_values():
    with pytest.raises(ConfigError, match="precision"):
        make_config(BASE, precision="fp16")
    assert make_config(BASE).precision == "fp32"
    assert make_config(BASE, precision="bf16").fingerprint() != make_config(BASE).fingerprint()
