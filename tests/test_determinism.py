"""Same config and seed -> identical metrics; a run stopped and restored continues exactly."""
import math

import pytest
import torch

from fedcore.config import make_config
from fedcore.federation import Federation

CASES = {
    # TextCNN (dropout), FedProx, client sampling
    "textcnn": {"data.source": "synthetic:topics?n=400&test=120", "data.max_len": 24,
                "model.name": "textcnn", "model.embed_dim": 16, "model.num_filters": 8,
                "data.vocab_size": 500, "method.name": "fedprox", "method.params": {"mu": 0.1},
                "clients_per_round": 4, "optimizer.lr": 0.05},
    # evaluation every other round: the restore point (round 3) is a round without evaluation
    "textcnn-eval-every-2": {"data.source": "synthetic:topics?n=400&test=120", "data.max_len": 24,
                             "model.name": "textcnn", "model.embed_dim": 16, "model.num_filters": 8,
                             "data.vocab_size": 500, "eval.every": 2, "optimizer.lr": 0.05},
    # a transformer with LoRA dropout and FedAvgW
    "tiny-bert-lora": {"data.source": "synthetic:topics?n=200&test=60", "data.max_len": 24,
                       "model.name": "tiny-bert", "model.lora.r": 4, "method.name": "fedavgw",
                       "method.params": {"beta": 0.5}, "optimizer.name": "adamw", "optimizer.lr": 0.01,
                       "clients_per_round": 3},
}


def cfg_for(name, **extra):
    base = {"partition.num_clients": 6, "partition.alpha": 0.5, "rounds": 5, "batch_size": 16, "seed": 11}
    return make_config({}, **{**base, **CASES[name], **extra})


def strip_time(history):
    return [{k: v for k, v in h.items() if "seconds" not in k} for h in history]


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert (math.isnan(x[k]) and math.isnan(y[k])) or x[k] == y[k], k


@pytest.mark.parametrize("name", list(CASES))
def test_same_seed_same_metrics_and_restore_is_exact(name, tmp_path):
    cfg = cfg_for(name)
    full = Federation(cfg)
    ref = strip_time(full.run())

    again = strip_time(Federation(cfg).run())
    same(ref, again)

    first = Federation(cfg)
    first.run(rounds=3)
    first.save(tmp_path / "state.pt")
    # scramble the global RNGs: a restore must not depend on what happened in between
    torch.manual_seed(999)
    resumed = Federation(cfg)
    resumed.restore(tmp_path / "state.pt")
    assert resumed.round == 3
    resumed.run()
    same(ref, strip_time(resumed.history))
    for key, value in full.global_state.items():
        assert torch.equal(value, resumed.global_state[key]), key


def test_other_seed_gives_other_metrics():
    a = strip_time(Federation(cfg_for("textcnn")).run(rounds=2))
    b = strip_time(Federation(cfg_for("textcnn", seed=12)).run(rounds=2))
    assert a != b


def test_restore_refuses_another_config(tmp_path):
    fed = Federation(cfg_for("textcnn"))
    fed.run(rounds=1)
    fed.save(tmp_path / "s.pt")
    other = Federation(cfg_for("textcnn", **{"optimizer.lr": 0.01}))
    with pytest.raises(ValueError, match="different config"):
        other.restore(tmp_path / "s.pt")
