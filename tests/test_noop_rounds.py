"""A round in which no client learns, for EVERY registered method (issue: aggregations that drift).

Each federation first trains one real round (so that the adapters are not at their zero start),
then runs several rounds through the real round loop (executor, start states, zeroing beyond each
client's rank, aggregation, rank bookkeeping, FLoRA's merge into the base) with the local loop
taking no step: every client returns exactly what it was sent. What must hold:

- one rank for every client (and every method without LoRA): the effective weights the evaluator
  and each client see (frozen base + merged deltas + s_k B_k A_k, every other trainable tensor,
  each client's held private tensors) do not change;
- mixed ranks (several profiles, one client at rank 1, and partial participation): the part of the
  update every client holds (rank slots inside the smallest rank) does not change, for the global
  model and for each client; no factor's norm and no singular value of the global update grows
  (for the zero-padding methods from an SVD start; from the learned state, no slot's own term, see
  SLOTWISE); and the components beyond the smallest rank behave as the method's paper says
  (EXPECTED below, with the exact shrink factors of FedIT and FlexLoRA checked on their own).

A method added to the registry is covered at once: it runs here with a config built from what it
declares (requires_lora, needs_teacher, handles_mixed_ranks), and a method that handles mixed ranks
fails `test_every_mixed_rank_method_states_its_behaviour` until its behaviour is stated below.
"""
from __future__ import annotations

import pytest
import torch

import fedcore.executors.sequential as executors
from fedcore import lora
from fedcore.config import ConfigError
from fedcore.resolve import make_config
from fedcore.federation import Federation
from fedcore.methods import METHODS
from fedcore.methods.base import plan_for

# What a no-op round does to the rank slots beyond the smallest client rank, from each paper:
#   "exact": they come back unchanged (the method aggregates exactly what clients hold);
#   "shrink": they shrink by the weight of the clients that hold them (zero-padded averaging: the
#   rank collapse that raFLoRA's paper measures), never grow.
EXPECTED = {
    "fedit": "shrink",  # zero-padded factor averaging, the naive baseline of the rank-heterogeneity papers
    "hetlora": "shrink",  # zero-padded, norm-weighted averaging (Cho et al.): the same collapse
    "flexlora": "shrink",  # SVD of sum p_k s_k B_k A_k: component i weighted by its holders' share
    "lora_fair": "exact",  # one rank in the paper; mixed ranks: every slot averaged over its holders
    "raflora": "exact",  # every partition renormalised over its contributors (Wu et al. 2026, Eq. 8)
    "flora": "exact",  # stacking is exactly sum p_k s_k B_k A_k; adapters restart at zero each round
    "ffa_lora": "exact",  # A is fixed and shared; each B column averaged over the clients holding it
}
RTOL = 1e-4  # float32 rounding of products and SVDs

# HetLoRA's rank self-pruning compares a client's pruned-part norm with where it ended its previous
# round (docs/methods.md "HetLoRA"), so an idle round right after a learning one can prune: the property of
# its aggregation is checked with pruning off, and pruning itself in test_hetlora_pruning_only_drops_slots
IDLE_PARAMS = {"hetlora": {"method.params.prune_lambda": 0.0}}

RANKS = {
    "ladder": {"model.lora.ranks": [1, 2, 4, 8]},
    "one_small": {"model.lora.ranks": [8, 1, 8, 8]},
    "heavy_tail": {"model.lora.rank_profile": "heavy_tail_light", "model.lora.rank_levels": [16, 8, 4, 2, 1],
                   "partition.num_clients": 5},
    "partial": {"model.lora.ranks": [1, 4, 8, 2], "clients_per_round": 2},
}


def config(name: str, lora_model: bool, **extra):
    m = METHODS[name]
    over = {"data.source": "synthetic:topics?n=240&test=60", "data.max_len": 16, "partition.num_clients": 4,
            "partition.alpha": 1.0, "method.name": name, "rounds": 100, "eval.every": 100, "batch_size": 16,
            "max_local_steps": 2, "optimizer.name": "adamw", "optimizer.lr": 0.05, "executor": "sequential",
            "torch_threads": 1, "seed": 3}
    if lora_model:
        over.update({"model.name": "tiny-bert", "model.lora.r": 4, "model.lora.alpha": 8})
    else:
        over.update({"model.name": "textcnn", "model.embed_dim": 16, "model.num_filters": 8})
    if m.needs_teacher:
        over.update({"teacher.name": "tiny-bert", "teacher.max_len": 16})
    over.update(IDLE_PARAMS.get(name, {}))
    over.update(extra)
    return make_config({}, **over)


def no_learning(monkeypatch):
    """Local training runs its loop with zero epochs: hooks called, no optimizer step."""
    real = executors.train_local

    def zero_epochs(*args, **kwargs):
        return real(*args, **{**kwargs, "epochs": 0})

    monkeypatch.setattr(executors, "train_local", zero_epochs)


def effective(fed: Federation) -> dict:
    """What the evaluator and each client see: per LoRA layer the full update (merged delta + scaled
    product), its part inside the smallest rank, and the factors' norms; every other tensor as is."""
    alpha, state, server = fed.cfg.model.lora.alpha, fed.global_state, fed.server_state
    out: dict = {"other": {k: v.clone() for k, v in state.items() if "lora_" not in k}}
    out["held"] = {f"{c}/{k}": v.clone() for c, held in server.held.items() for k, v in held.items()}
    if not fed.lora:
        return out
    ranks = [int(r) for r in server.ranks.tolist()]
    r_min, r_max = min(ranks), lora.resident_rank(state)

    def views(st: dict, rank: int) -> dict:
        s = lora.client_scale(alpha, rank, r_max)
        got = {}
        for prefix, (a, b) in lora.lora_layers(st).items():
            A, B = lora.truncate(st[a], st[b], rank)
            merged = server.frozen_delta.get(lora.base_weight_key(prefix))
            base = 0 if merged is None else merged.to(torch.float64)
            got[prefix] = {"full": base + lora.product(A, B, s),
                           "shared": base + lora.product(A[:r_min], B[:, :r_min], s),
                           "norm_A": float(A.norm()), "norm_B": float(B.norm()),
                           # the size of each rank slot's own term s B[:, i] A[i, :]
                           "slots": s * B.double().norm(dim=0) * A.double().norm(dim=1)}
        return got

    out["global"] = views(state, r_max)
    out["clients"] = {k: views(fed.method.client_start_state(state, server, plan_for(k, server)), r) for k, r in enumerate(ranks)}
    out["r_min"] = r_min
    return out


def close(x: torch.Tensor, y: torch.Tensor, rtol: float = RTOL) -> bool:
    """Equal up to rtol of the larger norm (float32 rounding of products and SVDs)."""
    scale = max(float(x.norm()), float(y.norm()), 1e-12)
    return float((x - y).norm()) <= rtol * scale


def canonical(fed: Federation) -> None:
    """Refactor each global adapter as its SVD (the method's split, else A = V^T, B = U S / s_max): the same global update,
    with rank slots that do not overlap. From factors whose slots partly cancel, zero-padded
    averaging (which shrinks some slots) can raise a singular value a little before the update
    settles on its shared part; from this start the shrinking of a slot is all that can happen."""
    lcfg = fed.cfg.model.lora
    s_max = lora.scale(lcfg.alpha, lcfg.resident_rank)
    split = getattr(fed.method.params, "split", "B")  # the method's own split (raFLoRA: sym), if it has one
    state = dict(fed.global_state)
    for a, b in lora.lora_layers(state).values():
        delta = lora.product(state[a], state[b], s_max)
        if float(delta.norm()) > 0:  # FLoRA's fresh adapters (B = 0) stay as they are
            A, B = lora.svd_factors(delta, state[a].shape[0], split)
            state[a], state[b] = A.to(state[a].dtype), (B / s_max).to(state[b].dtype)
    fed.global_state = state


def learned_then_idle(cfg, monkeypatch, idle_rounds: int = 3, svd_start: bool = False) -> tuple[dict, list[dict]]:
    fed = Federation(cfg)
    fed.run_round()  # a real round: adapters and heads away from their start
    if svd_start:
        canonical(fed)
    before = effective(fed)
    no_learning(monkeypatch)
    after = []
    for _ in range(idle_rounds):
        fed.run_round()
        after.append(effective(fed))
    return before, after


def assert_unchanged(before: dict, now: dict, what: str) -> None:
    for k, v in before["other"].items():
        assert close(v.double(), now["other"][k].double()), f"{what}: {k} moved"
    for k, v in before["held"].items():
        assert close(v.double(), now["held"][k].double()), f"{what}: client-held {k} moved"
    for who in ("global", "clients"):
        if who not in before:
            continue
        pairs = [(before[who], now[who])] if who == "global" else \
            [(before[who][c], now[who][c]) for c in before[who]]
        for b, n in pairs:
            for prefix in b:
                assert close(b[prefix]["full"], n[prefix]["full"]), f"{what}: the {who} update of {prefix} moved"


def homogeneous_cases():
    for name, m in METHODS.items():
        yield pytest.param(name, True, id=f"{name}-lora")  # every method runs on a LoRA model with one rank
        if not m.requires_lora:
            yield pytest.param(name, False, id=f"{name}-full")


@pytest.mark.parametrize("name, lora_model", list(homogeneous_cases()))
def test_a_round_without_learning_changes_nothing(name, lora_model, monkeypatch):
    before, after = learned_then_idle(config(name, lora_model), monkeypatch)
    for t, now in enumerate(after, 1):
        assert_unchanged(before, now, f"{name}, idle round {t}")
    if lora_model:  # the learned round did move the adapters: the test is not vacuous
        assert any(float(v["full"].norm()) > 0 for v in before["global"].values())


MIXED = [n for n, m in METHODS.items() if m.handles_mixed_ranks]


def test_every_mixed_rank_method_states_its_behaviour():
    missing = sorted(set(MIXED) - set(EXPECTED))
    assert not missing, f"state the no-op behaviour beyond the smallest rank of {missing} in EXPECTED"


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if not m.handles_mixed_ranks])
def test_methods_without_rank_rescaling_refuse_mixed_ranks(name):
    with pytest.raises(ConfigError) as err:
        config(name, True, **RANKS["ladder"])
    msg = str(err.value)
    assert f"method {name!r} cannot train clients of different LoRA ranks" in msg
    assert "ranks [1, 2, 4, 8]" in msg and "allowed: one rank for every client" in msg
    assert all(m in msg for m in MIXED if m != name)
    config(name, True, **{"model.lora.ranks": [4, 4, 4, 4]})  # equal ranks listed per client are fine


# zero-padded factor averaging scales each slot of A and of B on its own; from factors whose slots
# overlap (the state a learning round leaves), the cross terms between slots then no longer cancel
# as they did, and a singular value can rise a little (measured: +0.4% for FedIT, +0.5% for HetLoRA
# in one idle round) while every slot's own term shrinks. From an SVD start (slots that do not
# overlap) nothing can rise. The SVD-based and the exact methods keep their singular values from any start.
SLOTWISE = {"fedit", "hetlora"}


def outside(view: dict) -> float:
    return float((view["full"] - view["shared"]).norm())


@pytest.mark.parametrize("start", ["learned", "svd"])
@pytest.mark.parametrize("profile", list(RANKS))
@pytest.mark.parametrize("name", MIXED)
def test_mixed_ranks_keep_the_shared_part_and_never_grow(name, profile, start, monkeypatch):
    cfg = config(name, True, **RANKS[profile])
    before, after = learned_then_idle(cfg, monkeypatch, svd_start=start == "svd")
    prev = before
    for t, now in enumerate(after, 1):
        what = f"{name} {profile} from a {start} start, idle round {t}"
        for k, v in before["other"].items():  # the head: FedAvg of identical copies
            assert close(v.double(), now["other"][k].double()), f"{what}: {k} moved"
        for prefix, b in before["global"].items():
            n, p = now["global"][prefix], prev["global"][prefix]
            assert close(b["shared"], n["shared"]), f"{what}: the shared part of {prefix} moved"
            for c in before["clients"]:
                assert close(before["clients"][c][prefix]["shared"], now["clients"][c][prefix]["shared"]), \
                    f"{what}: client {c}'s shared part of {prefix} moved"
            if p["norm_B"] > 0:  # an adapter at its fresh start (FLoRA's, B = 0) has only an init A
                assert n["norm_A"] <= p["norm_A"] * (1 + RTOL) + 1e-9, f"{what}: |A| of {prefix} grew"
            assert n["norm_B"] <= p["norm_B"] * (1 + RTOL) + 1e-9, f"{what}: |B| of {prefix} grew"
            if name in SLOTWISE and start == "learned":
                assert (n["slots"] <= p["slots"] * (1 + RTOL) + 1e-12).all(), f"{what}: a slot of {prefix} grew"
            else:
                sv_prev, sv_now = torch.linalg.svdvals(p["full"]), torch.linalg.svdvals(n["full"])
                assert (sv_now <= sv_prev * (1 + RTOL) + 1e-9 * float(sv_prev[0])).all(), \
                    f"{what}: a singular value of the update of {prefix} grew: {sv_prev[:4]} -> {sv_now[:4]}"
            if EXPECTED[name] == "exact":
                assert close(b["full"], n["full"]), f"{what}: {name} should return the whole update of {prefix}"
        prev = now
    # beyond the smallest rank there was something to keep or lose (not rounding noise); FLoRA's
    # adapters are zero after each merge, its whole update lives in the merged (full-rank) delta ...
    assert all(outside(b) > 1e-3 * float(b["full"].norm()) if b["norm_B"] > 0 else float(b["full"].norm()) > 0
               for b in before["global"].values())
    if EXPECTED[name] == "shrink":  # ... and the collapse is real: it lost a visible share in 3 rounds
        for prefix, b in before["global"].items():
            assert outside(now["global"][prefix]) < 0.99 * outside(b), f"{name} {profile}: {prefix} kept its outside part"


def test_zero_padding_shrinks_each_slot_by_its_holders_weight(monkeypatch):
    """From an SVD start with every client in the round, one idle round multiplies slot i of the
    update by W_i^2 for FedIT (A and B each scaled by W_i = sum of n_k / n over the clients with
    r_k > i) and by W_i for FlexLoRA (the products are averaged, then refactored)."""
    for name, power in (("fedit", 2), ("flexlora", 1)):
        fed = Federation(config(name, True, **RANKS["ladder"]))
        fed.run_round()
        canonical(fed)
        lcfg = fed.cfg.model.lora
        s_max = lora.scale(lcfg.alpha, lcfg.resident_rank)
        sizes = torch.tensor([len(i) for i in fed.data.client_train], dtype=torch.float64)
        ranks = fed.server_state.ranks
        W = torch.stack([sizes[ranks > i].sum() for i in range(lcfg.resident_rank)]) / sizes.sum()
        sv0 = {p: torch.linalg.svdvals(lora.product(fed.global_state[a], fed.global_state[b], s_max))
               for p, (a, b) in lora.lora_layers(fed.global_state).items()}
        no_learning(monkeypatch)
        fed.run_round()
        monkeypatch.undo()
        for p, (a, b) in lora.lora_layers(fed.global_state).items():
            sv1 = torch.linalg.svdvals(lora.product(fed.global_state[a], fed.global_state[b], s_max))
            want = torch.sort(sv0[p][:len(W)] * W ** power, descending=True).values
            torch.testing.assert_close(sv1[:len(W)], want, rtol=1e-4, atol=1e-7)


def test_the_sym_fold_option_drifts_in_the_engine(monkeypatch):
    """fold: sym (FedIT's old default, kept as an option) grows the shared part in idle rounds."""
    before, after = learned_then_idle(config("fedit", True, **RANKS["ladder"], **{"method.params.fold": "sym"}),
                                      monkeypatch)
    for prefix, b in before["global"].items():
        growth = float(after[-1]["global"][prefix]["shared"].norm()) / float(b["shared"].norm())
        assert growth > 1.2, f"{prefix}: the shared part grew only {growth:.3f}x in 3 idle rounds"


def test_the_sym_fold_is_not_a_fixed_point():
    """The old default: both factors times sqrt(s_k / s_max). One idle round grows the shared product
    by sum_k w_k sqrt(c_k) * sum_k w_k / sqrt(c_k) > 1; the "B" fold returns it exactly."""
    from fedcore.methods.base import ClientUpdate

    g = torch.Generator().manual_seed(0)
    r_max, alpha, ranks, w = 8, 8.0, [8, 4, 2, 1], torch.tensor([0.25] * 4, dtype=torch.float64)
    a, b = "l.lora_A.weight", "l.lora_B.weight"
    glob = {a: torch.randn(r_max, 6, generator=g, dtype=torch.float64),
            b: torch.randn(5, r_max, generator=g, dtype=torch.float64)}
    ups = [ClientUpdate(k, 1, lora.for_client(glob, r, alpha), {}, r) for k, r in enumerate(ranks)]
    shared = lora.product(glob[a][:1], glob[b][:, :1])
    c = torch.tensor([r_max / r for r in ranks], dtype=torch.float64)
    growth = float((w * c.sqrt()).sum() * (w / c.sqrt()).sum())
    for fold, factor in (("B", 1.0), ("sym", growth)):
        out = lora.scaled_factor_average(ups, w, alpha, r_max, {"l.": (a, b)}, fold=fold)
        torch.testing.assert_close(lora.product(out[a][:1], out[b][:, :1]), factor * shared)
    assert growth > 1.15  # ranks 8/4/2/1, equal weights: 16% a round
    with pytest.raises(ValueError, match="fold 'x'; allowed: B, sym"):
        lora.scaled_factor_average(ups, w, alpha, r_max, {"l.": (a, b)}, fold="x")


def test_hetlora_pruning_only_drops_slots(monkeypatch):
    """An idle round in which HetLoRA's rule prunes (the average ends below the clients' own last
    norms): a pruned client's kept slots keep their product at its new scale and the pruned slots
    leave (before the fix, the kept product jumped by r / p)."""
    cfg = config("hetlora", True, **{**RANKS["ladder"], "method.params.prune_lambda": 0.01,
                                     "method.params.gamma": 0.5})
    fed = Federation(cfg)
    fed.run_round()
    start = {k: fed.method.client_start_state(fed.global_state, fed.server_state, plan_for(k, fed.server_state))
             for k in range(4)}
    ranks_before = fed.server_state.ranks.tolist()
    no_learning(monkeypatch)
    updates = fed.train_cohort(list(range(4)), 2)
    alpha, r_max = cfg.model.lora.alpha, cfg.model.lora.resident_rank
    pruned = [u for u in updates if u.rank < ranks_before[u.client]]
    assert pruned, "the rule pruned nobody: the case is not exercised"
    for u in pruned:
        r0, r1 = ranks_before[u.client], u.rank
        for a, b in lora.lora_layers(u.state).values():
            was = lora.product(start[u.client][a][:r1], start[u.client][b][:, :r1], lora.client_scale(alpha, r0, r_max))
            now = lora.product(u.state[a], u.state[b], lora.client_scale(alpha, r1, r_max))
            assert close(was, now), f"client {u.client}: the kept slots' product changed when its rank fell {r0}->{r1}"
            assert torch.count_nonzero(u.state[a][r1:]) == 0 and torch.count_nonzero(u.state[b][:, r1:]) == 0
