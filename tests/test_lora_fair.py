"""LoRA-FAIR's server step on tiny factors: the residual is solved in the paper's units (raw B), so
it does not depend on the LoRA scale alpha / r; the objective never rises; the xavier start is drawn
afresh every round and again the same when a round is re-run."""
import pytest
import torch

from fedcore import lora
from fedcore.methods import get_method
from fedcore.methods.base import ClientUpdate, ServerState, size_weights
from fedcore.methods.lora_fair import LoRAFAIRParams, LoRAFAIRRecord, objective, solve_residual

OUT, IN, R = 6, 5, 4  # non-square, so that a transposed factor would fail
A0, B0 = "blk.0.qkv.lora_A.default.weight", "blk.0.qkv.lora_B.default.weight"
A1, B1 = "blk.1.qkv.lora_A.default.weight", "blk.1.qkv.lora_B.default.weight"
HEAD = "head.weight"
SIZES = (30, 10, 60)


def updates(ranks=(None, None, None)) -> list[ClientUpdate]:
    """Three clients' raw factors (zero beyond each client's rank; None: the resident rank R)."""
    out = []
    for k, (rank, n) in enumerate(zip(ranks, SIZES)):
        g = torch.Generator().manual_seed(10 + k)
        state = {A0: torch.randn(R, IN, generator=g), B0: torch.randn(OUT, R, generator=g),
                 A1: torch.randn(R, IN, generator=g), B1: torch.randn(OUT, R, generator=g),
                 HEAD: torch.randn(3, OUT, generator=g)}
        for a, b in ((A0, B0), (A1, B1)):
            state[a], state[b] = lora.truncate(state[a], state[b], rank or R)
        out.append(ClientUpdate(k, n, state, {}, rank))
    return out


def fair(alpha: float, seed: int = 0, **params):
    m = get_method("lora_fair", {"lambda": 0.01, "server_steps": 150, "server_lr": 0.05, **params})
    m.lora_alpha, m.seed = alpha, seed
    return m


def product_unit_b(ups, alpha: float, **params) -> torch.Tensor:
    """B0 as the server returned it before this fix: the residual solved on s_max * B_bar (product
    units) and divided by s_max afterwards."""
    layers, w = lora.lora_layers(ups[0].state), size_weights(ups)
    s_max, avg = lora.scale(alpha, R), lora.holder_factor_average(ups, w, alpha, R, lora.lora_layers(ups[0].state), {})
    ideal = {p: lora.holder_ideal(ups, w, alpha, R, a, b, {}) for p, (a, b) in layers.items()}
    A_bar = {p: avg[a].double() for p, (a, b) in layers.items()}
    B_prod = {p: s_max * avg[b].double() for p, (a, b) in layers.items()}
    p = LoRAFAIRParams.model_validate({"lambda": 0.01, "server_steps": 150, "server_lr": 0.05, **params})
    with torch.enable_grad():
        delta, _ = solve_residual(ideal, B_prod, A_bar, p)
    prefix = next(p for p, (a, b) in layers.items() if b == B0)
    return ((B_prod[prefix] + delta[prefix]) / s_max).float()


@pytest.mark.parametrize("ranks", [(None, None, None), (1, 2, 4)], ids=["equal-ranks", "mixed-ranks"])
def test_residual_is_the_same_for_every_alpha_with_the_same_raw_factors(ranks):
    ups = updates(ranks)
    results = {alpha: fair(alpha).aggregate({}, ServerState(), ups) for alpha in (4.0, 16.0, 6.0, 40.0)}  # s_max 1, 4, 1.5, 10
    ref, ref_srv = results[4.0]
    for alpha, (out, srv) in results.items():
        for key in (A0, B0, A1, B1):
            torch.testing.assert_close(out[key], ref[key], rtol=1e-6, atol=1e-7)
        end = float(srv.reported["server_objective_end"])
        assert end == pytest.approx(float(ref_srv.reported["server_objective_end"]), rel=1e-9)
        assert float(srv.reported["server_steps_run"]) == float(ref_srv.reported["server_steps_run"])
    avg = lora.holder_factor_average(ups, size_weights(ups), 4.0, R, lora.lora_layers(ups[0].state), {})
    assert (ref[B0] - avg[B0]).abs().max() > 1e-3  # the residual did something
    assert torch.equal(ref[A0], avg[A0])  # A stays the plain average


def test_the_old_product_unit_solution_moves_with_alpha_and_the_new_one_does_not():
    ups = updates()
    new = {alpha: fair(alpha).aggregate({}, ServerState(), ups)[0][B0] for alpha in (4.0, 16.0)}
    old = {alpha: product_unit_b(ups, alpha) for alpha in (4.0, 16.0)}
    torch.testing.assert_close(old[4.0], new[4.0], rtol=1e-6, atol=1e-7)  # alpha = r: the units coincide
    assert (old[16.0] - new[16.0]).abs().max() > 1e-3  # s_max = 4: lambda * 4, server_lr / 16 before
    assert (old[16.0] - old[4.0]).abs().max() > 1e-3
    torch.testing.assert_close(new[16.0], new[4.0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("init", ["zeros", "xavier"])
@pytest.mark.parametrize("lr", [0.05, 50.0])  # 50: steps that overshoot; the best iterate is kept
def test_the_server_objective_never_rises(init, lr):
    ups = updates((1, 2, 4))
    out, srv = fair(8.0, delta_init=init, server_lr=lr, reg="squared" if lr > 1 else "norm").aggregate({}, ServerState(), ups)
    start, end = float(srv.reported["server_objective_start"]), float(srv.reported["server_objective_end"])
    assert end <= start
    if lr < 1:
        assert end < start - 1e-4  # a small step does improve it
    # the returned factors are the iterate whose objective was reported
    layers, w = lora.lora_layers(ups[0].state), size_weights(ups)
    avg = lora.holder_factor_average(ups, w, 8.0, R, layers, {})
    ideal = {p: lora.holder_ideal(ups, w, 8.0, R, a, b, {}) for p, (a, b) in layers.items()}
    A_bar = {p: avg[a].double() for p, (a, b) in layers.items()}
    B_bar = {p: avg[b].double() for p, (a, b) in layers.items()}
    delta = {p: out[b].double() - B_bar[p] for p, (a, b) in layers.items()}
    got = float(objective(ideal, B_bar, A_bar, delta, 0.01, "flat", "squared" if lr > 1 else "norm"))
    assert got == pytest.approx(end, abs=1e-5)  # float32 storage of B


def _xavier_start(server_state, seed=0):
    """The residual's random start (server_steps 0 returns it unchanged) and the new server state."""
    ups = updates()
    out, srv = fair(4.0, seed=seed, delta_init="xavier", server_steps=0).aggregate({}, server_state, ups)
    avg = lora.holder_factor_average(ups, size_weights(ups), 4.0, R, lora.lora_layers(ups[0].state), {})
    return out[B0] - avg[B0], srv


def test_xavier_start_is_drawn_per_round_and_repeats_when_the_round_is_rerun():
    first, srv1 = _xavier_start(ServerState())
    again, _ = _xavier_start(ServerState())
    second, srv2 = _xavier_start(srv1)
    other_seed, _ = _xavier_start(ServerState(), seed=1)
    assert srv1.own.round == 1 and srv2.own.round == 2
    assert torch.equal(first, again)  # the same run's round 1, run twice
    assert (first - second).abs().max() > 0.05 and (first - other_seed).abs().max() > 0.05
    bound = (6 / (OUT + R)) ** 0.5  # xavier-uniform on a [out, r] residual, as the fork's init
    assert 0 < first.abs().max() <= bound and 0 < second.abs().max() <= bound
    # a resumed run carries the counter in its server state: its round 2 is the same draw
    resumed, _ = _xavier_start(ServerState(own=LoRAFAIRRecord(1)))
    assert torch.equal(resumed, second)


def test_zero_start_needs_no_randomness_and_counts_rounds():
    ups = updates()
    a, s1 = fair(4.0, server_steps=0).aggregate({}, ServerState(), ups)
    b, s2 = fair(4.0, server_steps=0).aggregate({}, s1, ups)
    assert torch.equal(a[B0], b[B0]) and s2.own.round == 2
    assert float(s1.reported["server_objective_end"]) == float(s1.reported["server_objective_start"])
