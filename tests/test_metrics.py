import math

import numpy as np
import pytest

from fedcore.metrics import class_summary, client_accuracies, client_summary


def test_client_metrics_hand_computed():
    correct = [np.array([1, 1, 1, 0], bool),  # 0.75
               np.array([1, 0], bool),  # 0.5
               np.array([1, 1, 1, 1, 1], bool),  # 1.0
               np.array([0, 0, 0, 1], bool)]  # 0.25
    acc = client_accuracies(correct)
    assert acc.tolist() == [0.75, 0.5, 1.0, 0.25]
    s = client_summary(acc)
    assert s["mean_client_acc"] == pytest.approx(0.625)
    assert s["worst_client_acc"] == 0.25
    assert s["gap"] == pytest.approx(0.375)  # mean - worst, the paper's gap
    assert s["spread"] == pytest.approx(0.75)  # best - worst
    assert s["client_acc_std"] == pytest.approx(np.std([0.75, 0.5, 1.0, 0.25]))
    assert s["bottom10_client_acc"] == 0.25  # ceil(10% of 4) = 1 client
    assert s["num_eval_clients"] == 4


def test_empty_test_split_is_missing_not_zero():
    acc = client_accuracies([np.array([1, 0], bool), np.array([], bool), np.array([1], bool)])
    assert math.isnan(acc[1])
    s = client_summary(acc)
    assert s["clients_without_test"] == 1 and s["num_eval_clients"] == 2
    assert s["worst_client_acc"] == 0.5 and s["mean_client_acc"] == 0.75


def test_all_clients_without_test_gives_nan():
    s = client_summary(client_accuracies([np.array([], bool)]))
    assert math.isnan(s["mean_client_acc"]) and math.isnan(s["worst_client_acc"])


def test_class_metrics_hand_computed():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 0, 0, 0])
    counts = np.array([500, 50, 5])  # many / medium / few
    s = class_summary(preds, labels, 3, counts, many_min=100, few_max=20)
    assert s["global_acc"] == pytest.approx(4 / 8)
    assert s["class_acc/0"] == 0.75 and s["class_acc/1"] == 0.5 and s["class_acc/2"] == 0.0
    assert s["balancedness"] == 0.0  # worst-class accuracy
    assert s["balance_ratio"] == 0.0
    assert (s["many_acc"], s["medium_acc"], s["few_acc"]) == (0.75, 0.5, 0.0)


def test_single_class_client_and_absent_test_class():
    # a client holding one class; class 2 has no test sample, so it cannot be the worst class
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 1, 1, 1])
    s = class_summary(preds, labels, 3, np.array([200, 200, 200]))
    assert math.isnan(s["class_acc/2"])
    assert s["balancedness"] == 0.5 and s["balance_ratio"] == 0.5
    assert math.isnan(s["few_acc"]) and math.isnan(s["medium_acc"])
    acc = client_accuracies([preds[labels == 1] == 1])
    assert client_summary(acc)["worst_client_acc"] == 1.0


def test_many_medium_few_count_the_whole_training_pool():
    """DESIGN.md groups classes by their global training count: the pool's, not what the clients
    train on after their local test hold-outs (which would move a class across a threshold)."""
    from fedcore.config import make_config
    from fedcore.data import load_federated

    cfg = make_config({}, **{"data.source": "synthetic:topics?classes=3&n=330&test=60", "model.name": "textcnn",
                             "partition.num_clients": 3, "partition.local_test_fraction": 0.3})
    data = load_federated(cfg)
    pool = np.bincount(data.train_labels.numpy(), minlength=3)
    used = np.bincount(data.train_labels.numpy()[np.concatenate(data.client_train)], minlength=3)
    assert data.train_class_counts().tolist() == pool.tolist()
    assert (used < pool).all()  # the hold-outs are real: the two definitions differ here
    threshold = int(used.max())  # every class has more than this in the pool, not in training
    pred = labels = data.test_labels.numpy()
    groups = class_summary(pred, labels, 3, data.train_class_counts(), many_min=threshold, few_max=1)
    assert groups["many_acc"] == 1.0 and math.isnan(groups["medium_acc"])
