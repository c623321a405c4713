"""The federated LoRA family inside the engine: heterogeneous ranks in one r_max model, per-client
scaling, FLoRA's merge into the frozen base, exact save/restore, the LoRA metrics; and a short
real run of every method on MiniLM + AG News (slow, skipped where the data is absent)."""
import math

import pytest
import torch

from conftest import ag_news_uris, needs_ag_news
from fedcore.resolve import make_config
from fedcore.federation import Federation
from fedcore.methods.base import LocalContext

LORA_METHODS = ["fedit", "ffa_lora", "flora", "flexlora", "hetlora", "raflora", "lora_fair"]


def tiny(method, **extra):
    return make_config({}, **{
        "data.source": "synthetic:topics?n=240&test=80", "data.max_len": 16, "model.name": "tiny-bert",
        "partition.num_clients": 4, "partition.alpha": 1.0, "model.lora.ranks": [1, 2, 4, 4],
        "model.lora.alpha": 8, "method.name": method, "rounds": 2, "batch_size": 16, "max_local_steps": 3,
        "optimizer.name": "adamw", "optimizer.lr": 5e-3, "torch_threads": 1, **extra})


def test_clients_train_at_their_rank_and_scale(monkeypatch):
    fed = Federation(tiny("fedit", executor="sequential"))  # it spies on the sequential loop's hooks
    assert fed.server_state.ranks.tolist() == [1, 2, 4, 4]
    layers = [m for m in fed.model.modules() if isinstance(getattr(m, "scaling", None), dict) and hasattr(m, "lora_A")]
    seen = {}
    original = fed.method.on_local_end

    def spy(ctx: LocalContext):
        seen[ctx.client] = (ctx.rank, {layer.scaling["default"] for layer in layers})
        original(ctx)

    monkeypatch.setattr(fed.method, "on_local_end", spy)
    updates = fed.train_cohort([0, 1, 2, 3], 1)
    assert {k: v for k, v in seen.items()} == {0: (1, {8.0}), 1: (2, {4.0}), 2: (4, {2.0}), 3: (4, {2.0})}
    assert {layer.scaling["default"] for layer in layers} == {2.0}  # back to alpha / r_max for evaluation
    for u in updates:
        for name, t in u.state.items():
            if "lora_A." in name:
                assert torch.count_nonzero(t[u.rank:]) == 0 and torch.count_nonzero(t[:u.rank]) > 0
            if "lora_B." in name:
                assert torch.count_nonzero(t[:, u.rank:]) == 0


def test_lora_metrics_every_round():
    fed = Federation(tiny("flexlora"))
    m = fed.run_round()
    assert m["energy_shared"] + m["energy_outside_shared"] == pytest.approx(1)
    assert sum(m[f"energy_partition/{i}"] for i in (1, 2, 3)) == pytest.approx(1, abs=1e-6)  # ranks 1, 2, 4
    assert 1 <= m["effective_rank"] <= 4
    # A and B up to each client's rank: sum_k r_k (in + out) floats per LoRA layer, plus the head
    head = sum(t.numel() for k, t in fed.global_state.items() if "lora_" not in k)
    per_rank = sum(t.shape[1] + 0 for k, t in fed.global_state.items() if "lora_A." in k) + \
        sum(t.shape[0] for k, t in fed.global_state.items() if "lora_B." in k)
    assert m["comm_bytes_up"] == 4 * ((1 + 2 + 4 + 4) * per_rank + 4 * head)


def test_flora_merges_into_the_base_and_restores_exactly(tmp_path):
    cfg = tiny("flora", rounds=3)
    fed = Federation(cfg)
    base_names = [n for n, _ in fed.model.named_parameters() if n.endswith("base_layer.weight")]
    before = {n: p.detach().clone() for n, p in fed.model.named_parameters() if n in base_names}
    fed.run_round()
    params = dict(fed.model.named_parameters())
    for n in base_names:
        delta = fed.server_state.frozen_delta[n]
        assert torch.count_nonzero(delta) > 0
        torch.testing.assert_close(params[n].detach(), before[n] + delta)
    merged = {n: params[n].detach().clone() for n in base_names}
    fed.save(tmp_path / "s.pt")
    last = fed.run_round()
    again = Federation(cfg)
    again.restore(tmp_path / "s.pt")
    for n in base_names:
        assert torch.equal(dict(again.model.named_parameters())[n].detach(), merged[n])
    assert again.run_round()["global_acc"] == last["global_acc"]
    assert torch.equal(again.server_state.frozen_delta[base_names[0]], fed.server_state.frozen_delta[base_names[0]])


def test_hetlora_ranks_shrink_and_lora_fair_reports_cosines():
    fed = Federation(tiny("hetlora", **{"method.params.gamma": 0.5, "method.params.prune_lambda": 20.0}))
    for _ in range(3):  # round 1 starts from B = 0: nothing to prune yet
        fed.run_round()
    ranks = fed.server_state.ranks.tolist()
    assert all(r <= r0 for r, r0 in zip(ranks, [1, 2, 4, 4])) and ranks != [1, 2, 4, 4]
    m = Federation(tiny("lora_fair")).run_round()
    assert 0 < m["cos_ideal_avg"] <= m["cos_ideal_corrected"] <= 1 + 1e-9


@pytest.mark.slow
@needs_ag_news
@pytest.mark.parametrize("method", LORA_METHODS)
def test_every_lora_method_learns_ag_news_with_heterogeneous_ranks(method):
    train, test = ag_news_uris()
    cfg = make_config({}, **{
        "data.source": train, "data.test_source": test, "data.max_len": 32, "data.max_train_samples": 1200,
        "data.max_test_samples": 300, "model.name": "minilm-l6", "partition.num_clients": 4,
        # alpha 5: clients of similar size; at alpha 1 HetLoRA's norm weights favour the small, skewed
        # clients and its global model stays near chance after two rounds (see the issue note)
        "partition.alpha": 5.0, "model.lora.ranks": [2, 4, 8, 8], "model.lora.alpha": 16, "method.name": method,
        "rounds": 2, "batch_size": 16, "max_local_steps": 10, "optimizer.name": "adamw", "optimizer.lr": 3e-3,
        "eval.batch_size": 128, "eval.protocol": "class_filtered", "seed": 0})
    last = Federation(cfg).run()[-1]
    print(f"\n{method}: global {last['global_acc']:.3f} worst {last['worst_client_acc']:.3f} "
          f"outside-shared {last['energy_outside_shared']:.3f}")
    assert last["global_acc"] > 0.5, last  # chance is 0.25
    assert not math.isnan(last["comm_bytes_up"])


def test_energy_outside_shared_is_the_cumulative_update_for_flora_too():
    """FLoRA's adapters restart at zero: its global update is every delta merged into the base so
    far, as for the other methods' s_max B A; the round's own increment has its own key."""
    from fedcore import lora

    fed = Federation(tiny("flora", rounds=3))
    first = fed.run_round()
    merged_1 = {k: v.clone() for k, v in fed.server_state.frozen_delta.items()}
    second = fed.run_round()
    ranks = sorted(set(fed.server_state.ranks.tolist()))
    total, step = [], []
    for key, delta in fed.server_state.frozen_delta.items():
        total.append(lora.energy_fractions(delta, ranks[:1])[1])
        step.append(lora.energy_fractions(delta - merged_1[key], ranks[:1])[1])
    assert second["energy_outside_shared"] == pytest.approx(sum(total) / len(total), abs=1e-6)
    assert second["round_energy_outside_shared"] == pytest.approx(sum(step) / len(step), abs=1e-6)
    assert first["round_energy_outside_shared"] == pytest.approx(first["energy_outside_shared"], abs=1e-6)
    assert second["energy_outside_shared"] != pytest.approx(second["round_energy_outside_shared"], abs=1e-4)
