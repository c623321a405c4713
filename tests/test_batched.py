"""The batched LoRA executor (fedcore/executors/batched.py): a cohort's adapters over one frozen base in one pass
give the sequential executor's client updates (float tolerance, dropout off), for every LoRA method
it supports; it refuses the others with the reason; `auto` says which it chose and caches it."""
from __future__ import annotations

import json

import pytest
import torch

from fedcore.executors import BatchedLoRAExecutor, refusal
from fedcore.resolve import make_config
from fedcore.federation import Federation

BASE = {"data": {"source": "synthetic:topics?n=300&test=80", "max_len": 16},
        "partition": {"num_clients": 4, "alpha": 1.0}, "eval": {"protocol": "class_filtered"},
        "model": {"name": "tiny-bert", "encoder_dropout": 0.0, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "optimizer": {"name": "adamw", "lr": 5e-3}, "batch_size": 8, "rounds": 2, "torch_threads": 1,
        "executor": "sequential"}
HETERO = {"model.lora.ranks": [4, 2, 4, 1]}
SUPPORTED = [("fedavg", {}), ("fedavgw", {}), ("fedit", HETERO), ("ffa_lora", {}), ("flora", HETERO),
             ("flexlora", HETERO), ("raflora", HETERO), ("lora_fair", {})]


@pytest.mark.parametrize("method,extra", SUPPORTED, ids=[m for m, _ in SUPPORTED])
def test_batched_updates_equal_sequential_ones(method, extra):
    fed = Federation(make_config(BASE, **{"method.name": method, **extra}))
    assert refusal(fed.resident) is None
    cohort = fed.sample_clients(1)
    steps = sorted(len(fed.data.client_train[k]) // 8 for k in cohort)
    assert steps[0] < steps[-1]  # clients of different sizes: the short ones drop out of later steps
    sequential = fed.train_cohort(cohort, 1)
    batched = BatchedLoRAExecutor(fed.resident).run(fed.resident, fed.plan(cohort), 1, fed.server_state)
    for s, b in zip(sequential, batched):
        assert (s.client, s.num_samples, s.rank) == (b.client, b.num_samples, b.rank)
        assert s.metrics["steps"] == b.metrics["steps"] and s.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], rel=1e-4)
        for name in s.state:
            assert torch.allclose(s.state[name], b.state[name], atol=2e-5, rtol=1e-4), (method, s.client, name)
        moved = [n for n in s.state if not torch.equal(b.state[n], fed.global_state[n])]
        assert moved  # the comparison is of trained tensors, not of two copies of the start
    if method == "ffa_lora":
        a = [n for n in fed.global_state if "lora_A" in n]
        assert all(torch.equal(u.state[n], fed.global_state[n]) for u in batched for n in a)  # A stays fixed


def test_a_batched_run_follows_the_sequential_one():
    seq = Federation(make_config(BASE, **{"method.name": "fedit"}))
    bat = Federation(make_config(BASE, **{"method.name": "fedit", "executor": "batched", "executor_clients": 3}))
    assert bat.executor.name == "batched"
    ms, mb = seq.run(), bat.run()
    for name in seq.global_state:
        assert torch.allclose(seq.global_state[name], bat.global_state[name], atol=5e-5, rtol=1e-4), name
    assert ms[-1]["train_loss"] == pytest.approx(mb[-1]["train_loss"], rel=1e-3)
    assert [m["executor_batched"] for m in mb] == [1.0, 1.0] and ms[0]["executor_batched"] == 0.0


@pytest.mark.parametrize("method,match", [("fedprox", "after_backward"), ("hetlora", "local_loss"),
                                          ("fml", "build_model")])
def test_batched_refuses_methods_that_change_the_local_update(method, match):
    with pytest.raises(ValueError, match=f"executor: 'batched' cannot run this config: method '{method}'.*{match}"):
        Federation(make_config(BASE, **{"method.name": method, "executor": "batched"}))


def test_batched_refuses_a_model_without_lora_and_auto_falls_back():
    textcnn = {"model": {"name": "textcnn"}, "optimizer": {"name": "sgd"}}
    with pytest.raises(ValueError, match="model.tuning is 'full'"):
        Federation(make_config(BASE, **textcnn, executor="batched"))
    fed = Federation(make_config(BASE, **textcnn, executor="auto"))
    assert fed.executor.name == "sequential" and "does not apply" in fed.executor_reason


def test_auto_measures_once_says_which_and_reuses_the_choice(tmp_path, monkeypatch):
    cfg = make_config(BASE, **{"method.name": "fedit", "executor": "auto", "cache_dir": str(tmp_path)})
    fed = Federation(cfg)
    assert fed.executor_reason.startswith("auto: one pass of 4 clients took")
    [(key, ratio)] = json.loads((tmp_path / "executor_choice.json").read_text()).items()
    assert key.startswith("tiny-bert|linear|4|cpu|cpu|8|4|16|homogeneous|None|") and ratio > 0
    assert fed.executor.name == ("batched" if ratio < 0.95 else "sequential")

    def no_measure(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr("fedcore.executors.batched.time_step", no_measure)
    assert Federation(cfg).executor.name == fed.executor.name  # the cached choice, so runs agree
