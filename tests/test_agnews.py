"""A real short federation on AG News (4 classes, chance = 0.25) for both arms of the fairness
paradox study. Skipped where ../shared/data is absent (a user's fresh clone)."""
import pytest

from conftest import ag_news_uris, needs_ag_news
from fedcore.resolve import make_config
from fedcore.federation import Federation

pytestmark = [pytest.mark.slow, needs_ag_news]


def base():
    train, test = ag_news_uris()
    return {"data.source": train, "data.test_source": test, "partition.kind": "dirichlet",
            "partition.alpha": 0.5, "eval.protocol": "class_filtered", "seed": 0}


def test_textcnn_beats_chance_clearly():
    cfg = make_config({}, **base(), **{
        "model.name": "textcnn", "data.max_train_samples": 8000, "data.max_test_samples": 2000,
        "partition.num_clients": 10, "rounds": 3, "local_epochs": 2, "batch_size": 32,
        "optimizer.name": "adam", "optimizer.lr": 2e-3})
    fed = Federation(cfg)
    assert fed.data.class_names == ["World", "Sports", "Business", "Sci/Tech"]
    last = fed.run()[-1]
    print(f"\n{fed.cfg.model.name}: " + ", ".join(f"{k} {last[k]:.3f}" for k in ("global_acc", "mean_client_acc", "worst_client_acc")))
    assert last["global_acc"] > 0.6, last
    assert last["mean_client_acc"] > 0.6, last


def test_minilm_lora_beats_chance_clearly():
    cfg = make_config({}, **base(), **{
        "model.name": "minilm-l6", "model.lora.r": 8, "data.max_len": 48,
        "data.max_train_samples": 1200, "data.max_test_samples": 400,
        "partition.num_clients": 5, "rounds": 2, "batch_size": 16, "max_local_steps": 12,
        "optimizer.name": "adamw", "optimizer.lr": 2e-3, "eval.batch_size": 128})
    fed = Federation(cfg)
    last = fed.run()[-1]
    print(f"\n{fed.cfg.model.name}: " + ", ".join(f"{k} {last[k]:.3f}" for k in ("global_acc", "mean_client_acc", "worst_client_acc")))
    assert last["global_acc"] > 0.6, last
    assert last["mean_client_acc"] > 0.6, last
