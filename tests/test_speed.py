"""The engine's speed work changes no result: row-sparse embedding SGD, foreach optimizers, update
hand-over without clones and float64 aggregation without copies are each bit-for-bit the plain
implementation (a W1-shaped run, fixed seed, gives identical metrics and weights)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fedcore.local as local
from fedcore.resolve import make_config
from fedcore.executors import SequentialExecutor
from fedcore.params import load_state, snapshot
from fedcore.seeds import Purpose, derive_seed
from fedcore.federation import Federation
from fedcore.methods.base import ClientUpdate, LocalContext
from fedcore.models.textcnn import TextCNN

W1_SHAPED = {"data": {"source": "synthetic:topics?n=2400&test=400", "max_len": 32},
             "partition": {"num_clients": 20, "alpha": 0.5}, "clients_per_round": 5, "model": {"name": "textcnn",
                                                                                                 "embed_dim": 32},
             "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "batch_size": 32, "rounds": 3, "local_epochs": 2,
             "eval": {"every": 2}, "torch_threads": 2, "seed": 3}


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_row_sparse_sgd_is_dense_sgd_bit_for_bit(momentum):
    torch.manual_seed(0)
    dense = TextCNN(500, 4, embed_dim=16, num_filters=8)
    sparse = copy.deepcopy(dense)
    ocfg = make_config({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": momentum}}).optimizer
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.1, momentum=momentum)  # torch's own, dense
    opt_s = local.make_optimizer(ocfg, list(sparse.parameters()), sparse)
    assert isinstance(opt_s, local.RowSparseSGD)
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        ids = torch.randint(0, 60 if step % 3 else 500, (8, 12), generator=g)  # repeated rows and padding (0)
        ids[:, 9:] = 0
        y = torch.randint(0, 4, (8,), generator=g)
        for model, opt in ((dense, opt_d), (sparse, opt_s)):
            torch.manual_seed(step)  # the same dropout masks
            loss = F.cross_entropy(model({"input_ids": ids}), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    opt_s.close()
    for (name, a), b in zip(dense.state_dict().items(), sparse.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(dense.embedding.weight, TextCNN(500, 4, embed_dim=16, num_filters=8).embedding.weight)


def test_row_sparse_is_used_only_where_nothing_touches_gradients():
    model = TextCNN(50, 2, embed_dim=4, num_filters=2)
    params = list(model.parameters())
    sgd = make_config({"optimizer": {"name": "sgd"}}).optimizer
    assert isinstance(local.make_optimizer(sgd, params, model), local.RowSparseSGD)
    assert isinstance(local.make_optimizer(sgd, params), torch.optim.SGD)  # no model: dense
    decayed = make_config({"optimizer": {"name": "sgd", "weight_decay": 1e-4}}).optimizer
    assert isinstance(local.make_optimizer(decayed, params, model), torch.optim.SGD)
    assert isinstance(local.make_optimizer(make_config({"optimizer": {"name": "adamw"}}).optimizer, params, model),
                      torch.optim.AdamW)


class PlainExecutor(SequentialExecutor):
    """The executor before the speed work: state copied in, a clone of it out."""

    def run(self, res, plan, round_, server_state):
        cfg, updates = res.cfg, []
        for p in plan:
            k, start = p.client, p.start_state()
            load_state(res.params, start)
            seed = derive_seed(cfg.seed, round_, k, Purpose.LOCAL_TRAINING)
            torch.manual_seed(seed)
            idx = res.data.client_train[k]
            ctx = LocalContext(round=round_, client=k, num_samples=len(idx), params=res.params, start_state=start,
                               server=server_state, model=res.model)
            stats = local.train_local(res.model, res.method, ctx, res.data.train_inputs, res.data.train_labels, idx,
                                      epochs=cfg.local_epochs, batch_size=cfg.batch_size, ocfg=cfg.optimizer,
                                      generator=torch.Generator().manual_seed(seed), device=cfg.device)
            updates.append(ClientUpdate(k, len(idx), snapshot(res.params), stats))
        return updates


def plain_average(states, weights, keys=None):
    keys = list(states[0]) if keys is None else keys
    out = {}
    for key in keys:
        acc = torch.zeros_like(states[0][key], dtype=torch.float64)
        for w, s in zip(weights.tolist(), states):
            acc.add_(s[key].to(torch.float64), alpha=w)
        out[key] = acc.to(states[0][key].dtype)
    return out


def plain_optimizer(ocfg, params, model=None):
    return torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.momentum, weight_decay=ocfg.weight_decay)


def test_w1_shaped_run_is_identical_with_and_without_the_speed_work(monkeypatch):
    cfg = make_config(W1_SHAPED)
    fast = Federation(cfg)
    fast_history = fast.run()
    with monkeypatch.context() as m:
        m.setattr(local, "make_optimizer", plain_optimizer)
        m.setattr("fedcore.methods.fedavg.weighted_average", plain_average)
        plain = Federation(cfg)
        plain.executor = PlainExecutor()
        plain_history = plain.run()
    for a, b in zip(fast_history, plain_history):
        same = {k for k in a if k not in ("seconds", "train_seconds") and
                (a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])))}
        assert same == set(a) - {"seconds", "train_seconds"}, sorted(set(a) - same)[:5]
    assert all(torch.equal(fast.global_state[k], plain.global_state[k]) for k in fast.global_state)
    assert fast_history[-1]["global_acc"] > 0.3  # it learned something: the comparison is not of two no-ops


def test_benchmark_command_refuses_unknown_workloads_and_tabulates_rows(capsys):
    from benchmarks.__main__ import main, table
    from benchmarks.common import Row

    with pytest.raises(SystemExit) as e:
        main(["W9"])
    assert e.value.code == 2 and "unknown workload 'W9'" in capsys.readouterr().err
    text = table([Row("W1", "fedcore engine", [1.0, 3.0, 2.0], 0.5, 1234.0, "n"), Row("W2", "batched executor")])
    assert "   1.00    2.00    3.00     0.5000         1234  n" in text
    assert text.splitlines()[-1].split()[3:] == ["-", "-", "-", "-", "-"]  # nothing measured: dashes, not zeros
