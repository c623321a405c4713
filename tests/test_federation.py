"""The round loop's plumbing: who is sampled, who is evaluated, and what a divergence does."""
import numpy as np
import pytest
import torch

from fedcore.resolve import make_config
from fedcore.data import take
from fedcore.federation import Federation
from fedcore.local import DivergedError

BASE = {"data.source": "synthetic:topics?n=300&test=80", "data.max_len": 20, "model.name": "textcnn",
        "model.embed_dim": 16, "model.num_filters": 8, "data.vocab_size": 400, "partition.num_clients": 8,
        "partition.alpha": 0.3, "rounds": 2, "batch_size": 16, "seed": 3}


@pytest.mark.parametrize("protocol", ["local_split", "class_filtered"])
def test_every_client_is_scored_not_only_the_cohort(protocol):
    fed = Federation(make_config({}, **{**BASE, "clients_per_round": 3, "eval.protocol": protocol,
                                        "optimizer.name": "adam", "optimizer.lr": 0.01, "local_epochs": 2,
                                        "eval.batch_size": 7, "rounds": 3}))
    fed.run_round(), fed.run_round()
    m = fed.run_round()
    assert m["cohort_size"] == 3
    n = fed.data.num_clients
    assert m["num_eval_clients"] + m["clients_without_test"] == n
    # recompute acc_k sample by sample, each text alone and in its own order: independent of
    # evaluate()'s batching, length sorting and one-pass split
    d = fed.data
    inputs, labels = (d.train_inputs, d.train_labels) if protocol == "local_split" else (d.test_inputs, d.test_labels)
    fed.model.eval()
    expected, seen = [], set()
    with torch.no_grad():
        for idx in d.client_test:
            if len(idx) == 0:
                expected.append(np.nan)
                continue
            pred = [int(fed.model(take(inputs, torch.tensor([i]))).argmax()) for i in idx]
            seen.update(pred)
            expected.append(float(np.mean(np.array(pred) == labels.numpy()[idx])))
    assert len(seen) > 1, "the model must predict more than one class for this check to mean anything"
    np.testing.assert_allclose(fed.client_acc, expected)
    assert m["worst_client_acc"] == np.nanmin(expected)
    assert m["mean_client_acc"] == pytest.approx(np.nanmean(expected))
    assert [m[f"client_acc/{k}"] for k in d.client_ids] == pytest.approx(expected, nan_ok=True)


def test_unevaluated_rounds_carry_every_key():
    fed = Federation(make_config({}, **{**BASE, "eval.every": 2, "rounds": 3}))
    first, second, third = fed.run()
    assert first.keys() == second.keys() == third.keys()
    assert [first["evaluated"], second["evaluated"], third["evaluated"]] == [0.0, 1.0, 1.0]
    assert np.isnan(first["worst_client_acc"]) and not np.isnan(second["worst_client_acc"])


def test_cohorts_are_seeded_per_round():
    fed = Federation(make_config({}, **BASE, clients_per_round=3))
    cohorts = [fed.sample_clients(r) for r in range(1, 6)]
    assert all(len(c) == 3 and len(set(c)) == 3 for c in cohorts)
    assert len({tuple(c) for c in cohorts}) > 1
    assert cohorts == [fed.sample_clients(r) for r in range(1, 6)]


def test_divergence_raises_a_clear_error():
    fed = Federation(make_config({}, **{**BASE, "optimizer.lr": 1e30, "optimizer.momentum": 0.0}))
    with pytest.raises(DivergedError, match=r"(training loss became|not finite)"):
        fed.run()
