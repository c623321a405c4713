"""The federated LoRA family, checked against the formulas on small tensors (docs/methods.md):
heterogeneous ranks, FLoRA, FlexLoRA, FFA-LoRA, HetLoRA, raFLoRA, LoRA-FAIR, and the LoRA metrics."""
import math

import pytest
import numpy as np
import torch

from fedcore import lora
from fedcore.config import ConfigError
from fedcore.resolve import make_config
from fedcore.methods import get_method
from fedcore.methods.base import ClientUpdate, LocalContext, ServerState, plan_for
from fedcore.methods.hetlora import HetLoRARecord, norm_weights, pruned_norm
from fedcore.methods.raflora import partition_weights
from fedcore.ranks import client_ranks

OUT, IN, R_MAX, ALPHA = 7, 5, 4, 8.0  # non-square on purpose: a transpose would fail
A0, B0 = "enc.0.q.lora_A.default.weight", "enc.0.q.lora_B.default.weight"
A1, B1 = "enc.1.v.lora_A.default.weight", "enc.1.v.lora_B.default.weight"
HEAD = "classifier.weight"


def s(r):
    return ALPHA / r


def client(k, rank, n, seed):
    g = torch.Generator().manual_seed(seed)
    state = {A0: torch.randn(R_MAX, IN, generator=g), B0: torch.randn(OUT, R_MAX, generator=g),
             A1: torch.randn(R_MAX, IN, generator=g), B1: torch.randn(OUT, R_MAX, generator=g),
             HEAD: torch.randn(3, OUT, generator=g)}
    for a, b in ((A0, B0), (A1, B1)):
        state[a], state[b] = lora.truncate(state[a], state[b], rank)
    return ClientUpdate(k, n, state, {}, rank)


UPDATES = [client(0, 1, 30, 1), client(1, 2, 10, 2), client(2, 4, 60, 3)]
P = torch.tensor([30, 10, 60], dtype=torch.float64) / 100


def method(name, **params):
    m = get_method(name, params)
    m.lora_alpha = ALPHA
    return m


def ideal(a, b, updates=UPDATES, weights=P):
    return sum(w * s(u.rank) * u.state[b].double() @ u.state[a].double() for w, u in zip(weights.tolist(), updates))


def server(ranks=(1, 2, 4)):
    return ServerState(ranks=torch.tensor(ranks))


def global_like():
    return client(9, R_MAX, 1, 99).state


# --- ranks and pure LoRA operations ------------------------------------------------------------
def test_rank_profiles():
    lc = make_config({}, **{"model.name": "minilm-l6", "method.name": "fedit",
                           "model.lora.rank_profile": "heavy_tail_light"}).model.lora
    ranks = client_ranks(lc, 10, seed=0)
    assert sorted(ranks) == [4, 4, 4, 4, 8, 8, 16, 16, 32, 64] and lc.resident_rank == 64
    assert client_ranks(lc, 10, seed=0) == ranks and client_ranks(lc, 10, seed=1) != ranks
    strong = make_config({}, **{"model.name": "minilm-l6", "method.name": "fedit",
                           "model.lora.rank_profile": "heavy_tail_strong"}).model.lora
    assert sorted(client_ranks(strong, 10, 0)) == [4, 8, 16, 16, 32, 32, 64, 64, 64, 64]
    uniform = make_config({}, **{"model.name": "minilm-l6", "method.name": "fedit", "model.lora.rank_profile": "uniform",
                                 "model.lora.rank_levels": [2, 8]}).model.lora
    assert sorted(client_ranks(uniform, 5, 0)) == [2, 2, 8, 8, 8]
    listed = make_config({}, **{"model.name": "minilm-l6", "method.name": "fedit", "partition.num_clients": 3,
                                "model.lora.ranks": [2, 8, 4]})
    assert client_ranks(listed.model.lora, 3, 0) == [2, 8, 4] and listed.model.lora.resident_rank == 8
    with pytest.raises(ConfigError, match="model.lora.ranks: 2 ranks for 10 clients"):
        make_config({}, **{"model.name": "minilm-l6", "model.lora.ranks": [2, 8]})
    with pytest.raises(ConfigError, match="has fractions for 5 rank_levels, got 2"):
        make_config({}, **{"model.name": "minilm-l6", "model.lora.rank_profile": "heavy_tail_strong",
                           "model.lora.rank_levels": [2, 8]})
    with pytest.raises(ConfigError, match="rank 512 is above the width 384"):
        make_config({}, **{"model.name": "minilm-l6", "model.lora.rank_profile": "uniform",
                           "model.lora.rank_levels": [8, 512]})


def test_svd_factors_energy_and_bytes():
    delta = torch.randn(OUT, IN, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    best2 = U[:, :2] @ torch.diag(S[:2]) @ Vh[:2]
    for split in ("B", "sym"):
        A, B = lora.svd_factors(delta, 2, split)
        assert A.shape == (2, IN) and B.shape == (OUT, 2)
        torch.testing.assert_close(B @ A, best2)
    A, B = lora.svd_factors(delta, 7, "B")  # wider than the matrix: zero-padded
    assert A.shape == (7, IN) and torch.equal(A[5:], torch.zeros(2, IN))
    torch.testing.assert_close(B @ A, delta)
    fr = lora.energy_fractions(delta, [1, 3])
    assert sum(fr) == pytest.approx(1) and fr[0] == pytest.approx(float(S[0] ** 2 / (S ** 2).sum()))
    assert lora.effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0]))) == pytest.approx(2.0)
    state = {A0: torch.zeros(R_MAX, IN), B0: torch.zeros(OUT, R_MAX), HEAD: torch.zeros(3, OUT)}
    assert lora.nbytes(state, {A0: 1, B0: 1}) == 4 * (IN + OUT + 3 * OUT)


def test_for_client_rescales_b_and_truncates():
    g = global_like()
    got = lora.for_client(g, 2, ALPHA)
    # the client's product at its own scale is the global product truncated to rank 2
    want = s(R_MAX) * g[B0][:, :2].double() @ g[A0][:2].double()
    torch.testing.assert_close(s(2) * got[B0].double() @ got[A0].double(), want)
    assert torch.equal(got[A0][2:], torch.zeros(2, IN)) and torch.equal(got[HEAD], g[HEAD])


# --- FedIT with heterogeneous ranks ----------------------------------------------------------
def test_fedit_zero_pads_and_folds_scales():
    new, _ = method("fedit").aggregate(global_like(), server(), UPDATES)
    c = [s(u.rank) / s(R_MAX) for u in UPDATES]  # each client's scale ratio, folded into B alone
    want_b = sum(w * ck * u.state[B0].double() for w, ck, u in zip(P.tolist(), c, UPDATES))
    want_a = sum(w * u.state[A0].double() for w, u in zip(P.tolist(), UPDATES))
    torch.testing.assert_close(new[B0].double(), want_b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new[A0].double(), want_a, rtol=1e-6, atol=1e-6)
    # one client alone: its product at its own scale is what the global model holds
    solo, _ = method("fedit").aggregate(global_like(), server(), [UPDATES[1]])
    torch.testing.assert_close(s(R_MAX) * solo[B0].double() @ solo[A0].double(),
                               s(2) * UPDATES[1].state[B0].double() @ UPDATES[1].state[A0].double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new[HEAD].double(), sum(w * u.state[HEAD].double() for w, u in zip(P.tolist(), UPDATES)))


# --- FLoRA -----------------------------------------------------------------------------------
def test_flora_stacking_is_exact_merges_into_base_and_reinitialises():
    from fedcore.methods.flora import stack

    B_st, A_st = stack(UPDATES, P, ALPHA, R_MAX, A0, B0)
    assert B_st.shape == (OUT, 1 + 2 + 4) and A_st.shape == (1 + 2 + 4, IN)  # ranks, not r_max
    torch.testing.assert_close(B_st @ A_st, ideal(A0, B0))
    m = method("flora")
    g = global_like()
    new, srv = m.aggregate(g, server(), UPDATES)
    base = "enc.0.q.base_layer.weight"
    torch.testing.assert_close(srv.frozen_delta[base].double(), ideal(A0, B0), rtol=1e-5, atol=1e-5)
    new2, srv2 = m.aggregate(new, srv, UPDATES)  # a second round adds to the merged base
    torch.testing.assert_close(srv2.frozen_delta[base].double(), 2 * ideal(A0, B0), rtol=1e-5, atol=1e-5)
    for a, b in ((A0, B0), (A1, B1)):
        assert torch.equal(new[b], torch.zeros(OUT, R_MAX))  # B = 0: the merged model is unchanged
        assert new[a].abs().max() <= 1 / math.sqrt(IN) and not torch.equal(new[a], g[a])
    assert not torch.equal(new[A0], new2[A0])  # fresh every round


# --- FlexLoRA --------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["B", "sym"])
def test_flexlora_clients_get_the_best_rank_r_approximation(split):
    m = method("flexlora", split=split)
    new, srv = m.aggregate(global_like(), server(), UPDATES)
    dW = ideal(A0, B0)
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    for k, r in enumerate((1, 2, 4)):
        got = m.client_start_state(new, srv, plan_for(k, srv))
        best = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
        torch.testing.assert_close(s(r) * got[B0].double() @ got[A0].double(), best, rtol=1e-5, atol=1e-5)
    if split == "B":  # the official code: all of S in B, A = V^T (orthonormal rows)
        torch.testing.assert_close(new[A0].double() @ new[A0].double().T, torch.eye(R_MAX, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-5)


# --- FFA-LoRA --------------------------------------------------------------------------------
def test_ffa_lora_keeps_a_and_aggregates_exactly():
    g = global_like()
    shared_a = {A0: g[A0], A1: g[A1]}
    updates = []
    for u in UPDATES:  # clients trained B only, on the shared A (truncated to their rank)
        st = dict(u.state)
        for a, b in ((A0, B0), (A1, B1)):
            st[a], st[b] = lora.truncate(shared_a[a], u.state[b], u.rank)
        updates.append(ClientUpdate(u.client, u.num_samples, st, {}, u.rank))
    m = method("ffa_lora")
    new, _ = m.aggregate(g, server(), updates)
    assert torch.equal(new[A0], g[A0]) and torch.equal(new[A1], g[A1])
    # mixed ranks: B's column i is the mean of s_k B_k[:, i] over the clients holding it (r_k > i),
    # weights n_k renormalised over them; so the product is that mean, slot by slot
    want = torch.zeros(OUT, R_MAX, dtype=torch.float64)
    for i in range(R_MAX):
        hold = [(w, u) for w, u in zip(P.tolist(), updates) if u.rank > i]
        total = sum(w for w, _ in hold)
        want[:, i] = sum(w * s(u.rank) * u.state[B0][:, i].double() for w, u in hold) / total
    torch.testing.assert_close(s(R_MAX) * new[B0].double(), want, rtol=1e-5, atol=1e-5)
    # at one rank it is plain FedAvg of B, and exactly the average product
    same = [ClientUpdate(u.client, u.num_samples, {**u.state, A0: g[A0], B0: updates[-1].state[B0] * (k + 1)}, {}, R_MAX)
            for k, u in enumerate(updates)]
    eq, _ = m.aggregate(g, server((4, 4, 4)), same)
    torch.testing.assert_close(s(R_MAX) * eq[B0].double() @ eq[A0].double(), ideal(A0, B0, same), rtol=1e-5, atol=1e-5)
    # locally, through the engine's loop, A gets no step at all (not even AdamW's weight decay)
    from fedcore.resolve import make_config
    from fedcore.local import train_local

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Parameter(torch.randn(R_MAX, IN)), torch.nn.Parameter(torch.randn(OUT, R_MAX))

        def forward(self, batch):
            return batch["x"] @ (self.b @ self.a).T

    model = Tiny()
    before_a, before_b = model.a.detach().clone(), model.b.detach().clone()
    ctx = LocalContext(1, 0, 8, [(A0, model.a), (B0, model.b)], {})
    ocfg = make_config({"optimizer": {"name": "adamw", "lr": 0.1, "weight_decay": 0.5}}).optimizer
    train_local(model, m, ctx, {"x": torch.randn(8, IN)}, torch.randint(0, OUT, (8,)), np.arange(8), epochs=1,
                batch_size=4, ocfg=ocfg, generator=torch.Generator().manual_seed(0))
    assert not m.trains_locally(A0) and m.trains_locally(B0)
    assert torch.equal(model.a.detach(), before_a) and not torch.equal(model.b.detach(), before_b)


# --- HetLoRA ---------------------------------------------------------------------------------
def test_hetlora_norm_weights_and_truncation():
    w = norm_weights(UPDATES, ALPHA, R_MAX, A0, B0)
    norms = torch.tensor([float(torch.linalg.matrix_norm(s(u.rank) * u.state[B0].double() @ u.state[A0].double()))
                          for u in UPDATES], dtype=torch.float64)
    torch.testing.assert_close(w, norms / norms.sum())
    m = method("hetlora")
    new, srv = m.aggregate(global_like(), server(), UPDATES)
    c = [s(u.rank) / s(R_MAX) for u in UPDATES]  # the scale ratio goes to B (fold "B")
    want_a = sum(wk * u.state[A0].double() for wk, u in zip(w.tolist(), UPDATES))
    want_b = sum(wk * ck * u.state[B0].double() for wk, ck, u in zip(w.tolist(), c, UPDATES))
    torch.testing.assert_close(new[A0].double(), want_a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new[B0].double(), want_b, rtol=1e-6, atol=1e-6)
    got = m.client_start_state(new, srv, plan_for(1, srv))  # rank 2: truncated
    assert torch.equal(got[A0][2:], torch.zeros(2, IN)) and torch.equal(got[B0][:, 2:], torch.zeros(OUT, 2))
    torch.testing.assert_close(got[A0][:2], new[A0][:2])


def test_hetlora_pruning_lowers_the_rank_when_the_pruned_norm_falls():
    m = method("hetlora", gamma=0.5, prune_lambda=0.1)
    a = torch.nn.Parameter(torch.ones(R_MAX, IN))
    b = torch.nn.Parameter(torch.ones(OUT, R_MAX))
    ctx = LocalContext(1, 0, 10, [(A0, a), (B0, b)], {}, rank=4)
    m.on_local_start(ctx)  # first round: the reference is the start
    assert ctx.scratch["pruned_norm_ref"] == pytest.approx(float(b[:, 2:].detach().norm() * a[2:].detach().norm()))
    loss = m.local_loss(torch.zeros(2, 3), torch.tensor([0, 1]), ctx)
    assert float(loss) == pytest.approx(math.log(3) + 0.1 * float(pruned_norm(ctx.params, 4, 0.5)))
    with torch.no_grad():
        b[:, 2:] *= 0.5  # the pruned part shrank during the round
    kept = s(4) * (b[:, :2].detach().double() @ a[:2].detach().double())
    m.on_local_end(ctx)
    assert ctx.rank == 2 and math.isnan(ctx.report["pruned_norm"])
    # the engine's step after a lowered rank: the kept slots' product keeps its value at alpha / 2
    from fedcore.params import lower_rank

    a_k, b_k = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    lower_rank([(A0, a_k), (B0, b_k)], 4, ctx.rank)
    torch.testing.assert_close(s(2) * (b_k.detach().double() @ a_k.detach().double()), kept)
    assert torch.count_nonzero(b_k.detach()[:, 2:]) == 0 and torch.count_nonzero(a_k.detach()[2:]) == 0
    # later rounds compare with where the client ended its previous round (kept by the server)
    ctx2 = LocalContext(2, 0, 10, [(A0, a), (B0, b)], {}, rank=4,
                        server=ServerState(own=HetLoRARecord(torch.tensor([1e-3, 5.0], dtype=torch.float64))))
    m.on_local_start(ctx2)
    assert ctx2.scratch["pruned_norm_ref"] == pytest.approx(1e-3)
    m.on_local_end(ctx2)  # above its last end: the rank stays
    assert ctx2.rank == 4 and ctx2.report["pruned_norm"] == pytest.approx(float(pruned_norm(ctx2.params, 4, 0.5)))
    _, srv = m.aggregate(global_like(), server(), [ClientUpdate(1, 10, UPDATES[0].state, {"pruned_norm": 0.25}, 1)])
    assert math.isnan(float(srv.own.pruned_norm[0])) and float(srv.own.pruned_norm[1]) == 0.25


# --- raFLoRA ---------------------------------------------------------------------------------
def test_raflora_partition_weights_sum_to_one_over_contributors():
    w = partition_weights([1, 2, 4], [30, 10, 60], [1, 2, 4])
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(w[1], torch.tensor([0, 10 / 70, 60 / 70], dtype=torch.float64))
    assert w[2].tolist() == [0, 0, 1]
    assert partition_weights([1, 2], [5, 5], [1, 2, 4])[2].tolist() == [0, 0]  # no contributor: skipped


def test_raflora_equals_flexlora_at_equal_ranks():
    same = [client(k, R_MAX, n, 10 + k) for k, n in enumerate((30, 10, 60))]
    ra, _ = method("raflora", split="B").aggregate(global_like(), server((4, 4, 4)), same)
    flex, _ = method("flexlora", split="B").aggregate(global_like(), server((4, 4, 4)), same)
    for key in ra:
        torch.testing.assert_close(ra[key], flex[key], rtol=1e-5, atol=1e-5)


def test_rank_collapse_under_flexlora_and_not_under_raflora():
    """Stationary, direction-preserving clients (each returns what it received): FlexLoRA's energy
    outside the smallest rank decays geometrically; raFLoRA's stays (docs/methods.md "raFLoRA")."""
    ranks = (1, 2, 4)
    srv = server(ranks)
    start = global_like()
    outside = {}
    for name in ("flexlora", "raflora"):
        m = method(name, split="B")
        g, history = start, []
        for _ in range(12):
            ups = [ClientUpdate(k, n, m.client_start_state(g, srv, plan_for(k, srv)), {}, r)
                   for k, (r, n) in enumerate(zip(ranks, (30, 10, 60)))]
            g, _ = m.aggregate(g, srv, ups)
            history.append(1 - lora.energy_fractions(s(R_MAX) * g[B0].double() @ g[A0].double(), [1])[0])
        outside[name] = history
    flex, ra = outside["flexlora"], outside["raflora"]
    assert all(b < a for a, b in zip(flex[1:], flex[2:])) and flex[-1] < 0.05 * flex[1]
    assert ra[-1] == pytest.approx(ra[1], rel=1e-3) and ra[-1] > 0.05


# --- LoRA-FAIR -------------------------------------------------------------------------------
def test_lora_fair_residual_raises_cosine_and_respects_lambda():
    g = global_like()
    free = method("lora_fair", **{"lambda": 0.0, "server_steps": 300, "server_lr": 0.5})
    _, srv = free.aggregate(g, server(), UPDATES)
    assert float(srv.reported["cos_ideal_corrected"]) > float(srv.reported["cos_ideal_avg"]) + 0.01
    assert float(srv.reported["server_objective_end"]) <= float(srv.reported["server_objective_start"])
    stiff = method("lora_fair", **{"lambda": 100.0, "server_steps": 300, "server_lr": 0.001})
    new, srv = stiff.aggregate(g, server(), UPDATES)
    # mixed ranks: each slot averaged over the clients holding it (at one rank: FedIT's average)
    plain = lora.holder_factor_average(UPDATES, P, ALPHA, R_MAX, lora.lora_layers(g), g)
    torch.testing.assert_close(new[B0], plain[B0], rtol=0, atol=2e-3)  # the residual stays near zero
    assert float(srv.reported["cos_Bprime_Bbar"]) > 0.9999
    assert torch.equal(new[A0], plain[A0])  # A is the plain average
    for mode in ("columnwise", "flat"):
        m = method("lora_fair", **{"lambda": 0.01, "cos_mode": mode, "delta_init": "xavier", "reg": "squared"})
        _, srv = m.aggregate(g, server(), UPDATES)
        assert float(srv.reported["server_objective_end"]) <= float(srv.reported["server_objective_start"])


def test_holder_averages_follow_their_formula():
    """Slot i of A, B and of the ideal update averaged over the clients with r_k > i (weights
    renormalised over them, c_k = s_k / s_max on B); a slot nobody holds keeps the global's."""
    g, layers = global_like(), {"enc.0.q.": (A0, B0), "enc.1.v.": (A1, B1)}
    got = lora.holder_factor_average(UPDATES, P, ALPHA, R_MAX, layers, g)
    ideal_got = lora.holder_ideal(UPDATES, P, ALPHA, R_MAX, A0, B0, g)
    want_a, want_b = torch.zeros(R_MAX, IN, dtype=torch.float64), torch.zeros(OUT, R_MAX, dtype=torch.float64)
    want_ideal = torch.zeros(OUT, IN, dtype=torch.float64)
    for i in range(R_MAX):
        hold = [(w, u) for w, u in zip(P.tolist(), UPDATES) if u.rank > i]  # ranks 1, 2, 4
        total = sum(w for w, _ in hold)
        want_a[i] = sum(w * u.state[A0][i].double() for w, u in hold) / total
        want_b[:, i] = sum(w * s(u.rank) / s(R_MAX) * u.state[B0][:, i].double() for w, u in hold) / total
        want_ideal += sum(w * s(u.rank) * torch.outer(u.state[B0][:, i].double(), u.state[A0][i].double())
                          for w, u in hold) / total
    torch.testing.assert_close(got[A0].double(), want_a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[B0].double(), want_b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ideal_got, want_ideal, rtol=1e-6, atol=1e-6)
    # a cohort of rank-1 clients only: slots 1..3 keep the global's, in the average and the ideal
    small = [UPDATES[0], client(3, 1, 20, 7)]
    part = lora.holder_factor_average(small, torch.tensor([0.6, 0.4], dtype=torch.float64), ALPHA, R_MAX, layers, g)
    assert torch.equal(part[A0][1:], g[A0][1:]) and torch.equal(part[B0][:, 1:], g[B0][:, 1:])
    part_ideal = lora.holder_ideal(small, torch.tensor([0.6, 0.4], dtype=torch.float64), ALPHA, R_MAX, A0, B0, g)
    held = sum(w * lora.product(u.state[A0][:1], u.state[B0][:, :1], s(1)) for w, u in zip((0.6, 0.4), small))
    torch.testing.assert_close(part_ideal - held, lora.product(g[A0][1:], g[B0][:, 1:], s(R_MAX)), rtol=1e-5, atol=1e-6)


def test_holder_averages_stay_on_the_factors_device():
    """The slot weights are built on the CPU; the products run on the clients' device (a GPU in the
    paper profiles). PyTorch's meta device stands in for CUDA here: a CPU tensor mixed in fails."""
    ups = [ClientUpdate(k, 10, {A0: torch.zeros(R_MAX, IN, device="meta"), B0: torch.zeros(OUT, R_MAX, device="meta")},
                        {}, r) for k, r in enumerate((1, R_MAX))]
    w = torch.tensor([0.5, 0.5], dtype=torch.float64)
    out = lora.holder_factor_average(ups, w, ALPHA, R_MAX, {"enc.0.q.": (A0, B0)}, {})
    assert out[A0].device.type == out[B0].device.type == "meta"
    assert lora.holder_ideal(ups, w, ALPHA, R_MAX, A0, B0, {}).device.type == "meta"
