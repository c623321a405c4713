"""FML, Federated Mutual Learning (docs/methods.md "FML"): the mutual-distillation loss, only the meme model
aggregated, the private models kept per client across rounds and checkpoints."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedcore.resolve import make_config
from fedcore.federation import Federation
from fedcore.methods import get_method
from fedcore.methods.base import ClientUpdate, LocalContext, NoRecord, ServerState, plan_for
from fedcore.models.mutual import MutualPair

BASE = {"data": {"source": "sklearn:digits"}, "model": {"name": "mlp", "hidden": 16},
        "partition": {"num_clients": 4, "alpha": 0.5}, "method": {"name": "fml"},
        "rounds": 2, "batch_size": 32, "max_local_steps": 5, "clients_per_round": 2, "torch_threads": 1}


def _kl(p_logits, q_logits):
    p, q = F.softmax(p_logits.detach(), -1), F.softmax(q_logits.detach(), -1)
    return float((p * (p.log() - q.log())).sum(-1).mean())


class Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, batch):
        return self.lin(batch["x"])


def test_fml_loss_is_the_two_mutual_objectives():
    torch.manual_seed(0)
    pair = MutualPair(Lin(), Lin())
    x, y = {"x": torch.randn(6, 4)}, torch.tensor([0, 1, 2, 0, 1, 2])
    method = get_method("fml", {"alpha": 0.3, "beta": 0.6})
    ctx = LocalContext(round=1, client=0, num_samples=6, params=[], start_state={}, batch=x, model=pair)
    m, p = pair.shared(x), pair.private(x)
    expect = (0.3 * F.cross_entropy(p, y).item() + 0.7 * _kl(m, p)
              + 0.6 * F.cross_entropy(m, y).item() + 0.4 * _kl(p, m))
    loss = method.local_loss(pair(x), y, ctx)
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    # each model learns from the other's detached prediction: the shared model's gradient is that of
    # its own objective alone
    loss.backward()
    g_shared = pair.shared.lin.weight.grad.clone()
    pair.zero_grad()
    m = pair.shared(x)
    (0.6 * F.cross_entropy(m, y) + 0.4 * F.kl_div(F.log_softmax(m, -1), F.softmax(pair.private(x).detach(), -1),
                                                  reduction="batchmean")).backward()
    assert torch.allclose(g_shared, pair.shared.lin.weight.grad, atol=1e-6)


def test_fml_aggregates_only_the_shared_model_and_keeps_each_private_one():
    method = get_method("fml")
    g = {"shared.w": torch.zeros(2), "private.w": torch.full((2,), 9.0)}
    u = [ClientUpdate(0, 1, {"shared.w": torch.tensor([1.0, 2.0]), "private.w": torch.tensor([5.0, 5.0])}),
         ClientUpdate(2, 3, {"shared.w": torch.tensor([3.0, 6.0]), "private.w": torch.tensor([7.0, 1.0])})]
    new, server = method.aggregate(g, ServerState(), u)
    assert torch.allclose(new["shared.w"], torch.tensor([0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 6]))
    assert torch.equal(new["private.w"], g["private.w"])  # never averaged
    assert torch.equal(server.held[0]["private.w"], torch.tensor([5.0, 5.0]))
    assert torch.equal(server.held[2]["private.w"], torch.tensor([7.0, 1.0]))
    assert server.own == NoRecord() and set(server.held) == {0, 2}
    # a client starts from the global meme model and its own private model (the initial one until it trained)
    start = method.client_start_state(new, server, plan_for(2, server))
    assert torch.equal(start["shared.w"], new["shared.w"]) and torch.equal(start["private.w"], torch.tensor([7.0, 1.0]))
    assert torch.equal(method.client_start_state(new, server, plan_for(1, server))["private.w"], g["private.w"])


def test_an_fml_round_trains_both_models_and_survives_a_checkpoint(tmp_path):
    cfg = make_config(BASE)
    fed = Federation(cfg)
    init = fed.global_state
    m1 = fed.run_round()
    cohort = fed.sample_clients(1)
    for k in cohort:
        private = {n: fed.server_state.held[k][n] for n in init if n.startswith("private.")}
        assert any(not torch.equal(private[n], init[n]) for n in private)  # the private model trained
    assert any(not torch.equal(fed.global_state[n], init[n]) for n in init if n.startswith("shared."))
    assert all(torch.equal(fed.global_state[n], init[n]) for n in init if n.startswith("private."))
    assert not math.isnan(m1["global_acc"])
    fed.save(tmp_path / "s.pt")
    m2 = fed.run_round()
    resumed = Federation(cfg)
    resumed.restore(tmp_path / "s.pt")
    assert resumed.run_round()["global_acc"] == m2["global_acc"]
    assert np.isfinite(m2["train_loss"])


def test_batch_norm_statistics_travel_with_the_weights():
    """A student with BatchNorm (Fed-LPFM's timm students): its running mean and variance are part of
    each update, averaged by n_k like the weights, and sent back to the clients."""
    from fedcore.methods.base import size_weights, weighted_average

    cfg = make_config({"data": {"source": "sklearn:digits?images=1"}, "partition": {"num_clients": 3},
                       "model": {"name": "timm:resnet18", "tuning": "full", "init": "random"},
                       "method": {"name": "fedavg"}, "max_local_steps": 2, "batch_size": 16, "rounds": 1})
    fed = Federation(cfg)
    key = "model.bn1.running_mean"
    assert key in fed.global_state and "model.bn1.running_var" in fed.global_state
    assert torch.equal(fed.global_state[key], torch.zeros_like(fed.global_state[key]))
    cohort = fed.sample_clients(1)
    updates = fed.train_cohort(cohort, 1)
    assert all(not torch.equal(u.state[key], fed.global_state[key]) for u in updates)  # each client's own statistics
    new, _ = fed.method.aggregate(fed.global_state, fed.server_state, updates)
    expect = weighted_average([u.state for u in updates], size_weights(updates), [key])[key]
    assert torch.equal(new[key], expect)
    assert not fed.model.model.bn1.running_mean.requires_grad
