"""FedPuReL (docs/methods.md "FedPuReL"): temperature-aligned KL, gradient purification, residual
personalization, the pooled hierarchical partition and the zero-shot-head model it starts from."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedcore.alignment import aligned_temperatures, entropy, plain_kl, purify, tkl, tkl_align_loss
from fedcore.config import ConfigError
from fedcore.resolve import make_config
from fedcore.data.partition import pooled_hierarchical
from fedcore.params import load_state
from fedcore.federation import Federation
from fedcore.methods import get_method
from fedcore.methods.base import LocalContext

# MiniLM with its own zero-shot head and LoRA, on a small long-tailed synthetic pool
BASE = {"data": {"source": "synthetic:topics?n=600&test=200", "max_len": 16, "long_tail_if": 10},
        "partition": {"kind": "pooled", "num_clients": 4, "alpha": 1.0},
        "model": {"name": "minilm-l6", "head": "zero_shot", "lora": {"r": 4}},
        "method": {"name": "fedpurel"}, "optimizer": {"name": "sgd", "lr": 0.01},
        "rounds": 2, "batch_size": 16, "max_local_steps": 3, "torch_threads": 2}


@pytest.fixture(scope="module")
def fed():
    return Federation(make_config(BASE))


def test_temperature_search_gives_equal_entropies_at_their_mean():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(64, 10, generator=g, dtype=torch.float64) * torch.linspace(0.2, 8, 64, dtype=torch.float64)[:, None]
    z = torch.randn(64, 10, generator=g, dtype=torch.float64) * 3
    tau_f, tau_z = aligned_temperatures(f, z, steps=40)
    target = (entropy(f) + entropy(z)) / 2
    # inside the bracket the entropies meet; a row whose target needs tau < 0.05 (two near-tied top
    # logits keep the entropy near log 2) stops at the bracket end, with entropy above the target
    inside = (tau_f > 0.0501) & (tau_z > 0.0501) & (tau_f < 19.99) & (tau_z < 19.99)
    assert inside.sum() >= 60
    assert torch.allclose(entropy(f, tau_f)[inside], target[inside], atol=1e-6)
    assert torch.allclose(entropy(z, tau_z)[inside], target[inside], atol=1e-6)
    assert (entropy(f, tau_f)[~inside] > target[~inside]).all()
    # 20 halvings (the paper's code) already align the entropies to about 1e-4
    tau_f20, tau_z20 = aligned_temperatures(f, z)
    assert (entropy(f, tau_f20) - entropy(z, tau_z20))[inside].abs().max() < 1e-3
    # a target out of reach (uniform logits keep entropy log C at every tau) ends at a bracket end
    flat = torch.zeros(1, 4, dtype=torch.float64)
    peaked = torch.tensor([[10.0, 0, 0, 0]], dtype=torch.float64)
    tau_flat, _ = aligned_temperatures(flat, peaked)
    assert tau_flat.item() == pytest.approx(0.05, abs=1e-4)


def test_tkl_of_identical_logits_is_zero_and_tkl_ignores_confidence():
    z = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 0.5]], dtype=torch.float64)
    assert tkl(z, z).abs().max().item() < 1e-12
    assert tkl_align_loss(z, z).item() == pytest.approx(0.0, abs=1e-12)
    # the same ranking at another confidence: plain KL sees a difference, TKL (almost) none
    assert tkl(3 * z, z).max().item() < 1e-6 < plain_kl(3 * z, z).item()
    # the alignment loss is KL(teacher || student) at the aligned temperatures, batch mean
    f = torch.tensor([[0.5, 0.2, 0.1], [1.0, -1.0, 0.0]], dtype=torch.float64)
    tau_f, tau_z = aligned_temperatures(f, z)
    p_t, p_s = F.softmax(z / tau_z[:, None], -1), F.softmax(f / tau_f[:, None], -1)
    expect = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert tkl_align_loss(f, z).item() == pytest.approx(expect.item(), rel=1e-10)


def test_purification_makes_every_tensor_agree_with_the_alignment_gradient():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        g_task, g_align = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
        out, conflicted = purify(g_task, g_align)
        dot = float((g_task * g_align).sum())
        assert conflicted == (dot < 0)
        if dot >= 0:
            assert out is g_task  # untouched, bit for bit
        else:
            assert abs(float((out * g_align).sum())) < 1e-5  # strength 1: orthogonal
            half, _ = purify(g_task, g_align, 0.5)
            assert dot < float((half * g_align).sum()) < 0


def test_fedpurel_steps_with_the_purified_task_gradient_only():
    """Through the method's hooks on a real model: after backward, each parameter's gradient is the
    CE gradient projected per tensor, never the alignment gradient added."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    params = list(model.named_parameters())
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    teacher = torch.randn(12, 3) * 4
    method = get_method("fedpurel")
    ctx = LocalContext(round=1, client=0, num_samples=12, params=params, start_state={}, batch={"teacher_logits": teacher})
    method.on_local_start(ctx)
    logits = model(x)
    g_ce = torch.autograd.grad(F.cross_entropy(logits, y), [p for _, p in params], retain_graph=True)
    g_al = torch.autograd.grad(tkl_align_loss(logits, teacher), [p for _, p in params], retain_graph=True)
    loss = method.local_loss(logits, y, ctx)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item())
    loss.backward()
    method.after_backward(ctx)
    conflicts = 0
    for (_, p), gc, ga in zip(params, g_ce, g_al):
        if float((gc * ga).sum()) >= 0:
            assert torch.equal(p.grad, gc)
        else:
            conflicts += 1
            assert abs(float((p.grad * ga).sum())) < 1e-6
            assert torch.allclose(p.grad, purify(gc, ga)[0])
    method.on_local_end(ctx)
    assert ctx.reported["purified_fraction"] == conflicts / len(params)
    # strength 0: no alignment gradient is computed at all, plain CE
    off = get_method("fedpurel", {"strength": 0})
    ctx0 = LocalContext(round=1, client=0, num_samples=12, params=params, start_state={}, batch={"teacher_logits": teacher})
    off.local_loss(model(x), y, ctx0)
    assert "g_align" not in ctx0.scratch


def test_personal_loss_is_the_residual_objective():
    lg = torch.tensor([[1.0, 0.0, -1.0], [0.3, 0.2, 0.1]])
    lp = torch.tensor([[0.0, 2.0, 0.0], [-1.0, 0.0, 1.0]])
    y = torch.tensor([1, 2])
    lam = 0.7
    method = get_method("fedpurel", {"lambda": lam})
    expect = (1 - lam) * F.cross_entropy(lg + lp, y) + lam * F.cross_entropy(lp, y)
    assert method.personal_loss(lg, lp, y).item() == pytest.approx(expect.item(), rel=1e-6)
    assert torch.equal(method.personal_logits(lg, lp), lg + lp)


def test_zero_shot_head_model_starts_at_the_teacher_and_the_teacher_mirrors_it(fed):
    assert fed.cfg.teacher.name == "minilm-l6" and fed.cfg.teacher.max_len == 16
    assert fed.cfg.eval.protocol == "pooled_local"
    lg = fed.logits(fed.data.test_inputs)
    assert torch.allclose(lg, fed.data.test_inputs["teacher_logits"], atol=1e-4)
    assert all("lora_" in n for n, _ in fed.params)  # the head is the fixed prompt embeddings


def test_stage_two_leaves_every_global_parameter_bit_identical(fed):
    cohort = fed.sample_clients(1)
    updates = fed.train_cohort(cohort, 1)
    new_global, new_server = fed.method.aggregate(fed.global_state, fed.server_state, updates)
    fed.global_state, fed.server_state = new_global, new_server
    load_state(fed.params, new_global)
    before = {n: p.detach().clone() for n, p in fed.model.named_parameters()}
    held = fed.personalize(cohort, 1)
    for n, p in fed.model.named_parameters():
        assert torch.equal(p, before[n]), n  # frozen base and global branch as they were
    assert all(torch.equal(fed.global_state[n], new_global[n]) for n in new_global)
    names = [n for n, _ in fed.params]
    assert set(held) == set(cohort) and all(set(held[k]) == set(names) for k in cohort)
    # the private branches trained away from their initial values (B starts at zero)
    moved = [n for n in names if "lora_B" in n and not torch.equal(held[cohort[0]][n], fed.initial_state[n])]
    assert moved
    # the personalized prediction of a client is argmax(global + private logits) on its own test rows
    fed.server_state = fed.server_state.updated(held={**fed.server_state.held, **held})
    k, rows = cohort[0], fed.data.client_test[cohort[0]]
    load_state(fed.params, fed.global_state)
    lg = fed.logits(fed.data.test_inputs, rows)
    load_state(fed.params, held[k])
    lp = fed.logits(fed.data.test_inputs, rows)
    load_state(fed.params, fed.global_state)
    got = fed.personal_predictions(fed.data.test_inputs, [rows if i == k else rows[:0] for i in range(len(fed.data.client_test))])
    assert np.array_equal(got, (lg + lp).argmax(-1).numpy())


def test_a_fedpurel_run_reports_global_personal_and_zero_shot_rows():
    cfg = make_config(BASE, **{"clients_per_round": 2, "rounds": 2, "eval.every": 2})
    runs = Federation(cfg).run()
    for key in ("global_acc", "many_acc", "few_acc", "balancedness", "mean_client_acc", "gm_mean_client_acc",
                "local_few_acc", "teacher_acc", "teacher_few_acc", "teacher_mean_client_acc", "tkl_to_zero_shot",
                "teacher_class_acc/0", "purified_fraction"):
        assert all(key in m for m in runs), key
    assert runs[0].keys() == runs[1].keys()  # the round without evaluation carries every key (NaN)
    assert np.isnan(runs[0]["teacher_acc"]) and runs[1]["teacher_acc"] > 0.25  # 4 classes; the prior's row
    assert runs[1]["tkl_to_zero_shot"] > 0  # fine-tuning moved the model off its prior
    # same seed, same metrics (stage 2 is seeded per round and client too)
    again = Federation(cfg).run()
    assert [m["mean_client_acc"] for m in runs] == [m["mean_client_acc"] for m in again]


def test_pooled_partition_draws_disjoint_client_sets_from_train_and_test():
    train_y = np.repeat(np.arange(6), [60, 40, 25, 15, 8, 4])
    test_y = np.repeat(np.arange(6), 20)
    train, test = pooled_hierarchical(train_y, test_y, 5, beta=0.5, seed=3, coarse=[0, 0, 1, 1, 2, 2])
    per_client = (len(train_y) + len(test_y)) // 5
    assert [len(a) + len(b) for a, b in zip(train, test)] == [per_client] * 5
    all_train, all_test = np.concatenate(train), np.concatenate(test)
    assert len(set(all_train)) == len(all_train) and len(set(all_test)) == len(all_test)
    assert all_train.max() < len(train_y) and all_test.max() < len(test_y)
    again = pooled_hierarchical(train_y, test_y, 5, beta=0.5, seed=3, coarse=[0, 0, 1, 1, 2, 2])
    assert all(np.array_equal(a, b) for a, b in zip(train, again[0]))
    # beta sets the skew over coarse labels: small, a client's samples crowd into one; large, they spread
    coarse = np.array([0, 0, 1, 1, 2, 2])

    def top_share(beta):
        shares = []
        for seed in range(5):
            tr, te = pooled_hierarchical(train_y, test_y, 5, beta=beta, seed=seed, coarse=list(coarse))
            for a, b in zip(tr, te):
                labels = coarse[np.concatenate([train_y[a], test_y[b]])]
                shares.append(np.bincount(labels, minlength=3).max() / len(labels))
        return np.mean(shares)

    # (the pool itself is about 51/29/19% by coarse label, so an even spread still tops near 0.51)
    assert top_share(1e-3) > 0.8 > 0.6 > top_share(100.0)
    # a client's local test split follows its own label distribution
    big_y = np.repeat(np.arange(4), 500)
    tr, te = pooled_hierarchical(big_y, np.repeat(np.arange(4), 500), 4, beta=0.3, seed=1)
    for a, b in zip(tr, te):
        p_train = np.bincount(big_y[a], minlength=4) / len(a)
        p_test = np.bincount(np.repeat(np.arange(4), 500)[b], minlength=4) / len(b)
        assert np.abs(p_train - p_test).max() < 0.15


def test_config_checks_for_the_pooled_partition_and_the_zero_shot_head():
    assert make_config({"partition": {"kind": "pooled"}}).eval.protocol == "pooled_local"
    with pytest.raises(ConfigError, match="pooled_local"):
        make_config({"partition": {"kind": "pooled"}, "eval": {"protocol": "class_filtered"}})
    with pytest.raises(ConfigError, match="pooled_local"):
        make_config({"eval": {"protocol": "pooled_local"}})
    with pytest.raises(ConfigError, match="zero_shot"):
        make_config({"model": {"name": "textcnn", "head": "zero_shot"}})
    with pytest.raises(ConfigError, match="lambda"):
        make_config({"method": {"name": "fedpurel", "params": {"lambda": 1.5}}, "model": {"name": "minilm-l6"}})
    with pytest.raises(ConfigError, match="model.tuning"):
        make_config({"method": {"name": "fedpurel"}})  # textcnn has no LoRA factors
    with pytest.raises(ConfigError, match="exactly one"):
        make_config({"model": {"name": "minilm-l6", "prompt": "no slot"}})
    with pytest.raises(ConfigError, match="private branch"):  # stage 2 trains at one rank
        make_config({"method": {"name": "fedpurel"}, "model": {"name": "minilm-l6", "lora": {"rank_profile": "uniform"}}})
