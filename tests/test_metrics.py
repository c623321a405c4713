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
    """docs/metrics.md groups classes by their global training count: the pool's, not what the clients
    train on after their local test hold-outs (which would move a class across a threshold)."""
    from fedcore.resolve import make_config
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


# --- the schema (fedcore/metrics.py SCHEMA): one declaration for evaluation, placeholders and docs ---
def test_the_docs_tables_are_the_schema():
    from pathlib import Path

    from fedcore.metrics import GROUPS, SCHEMA, markdown_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    for group, title in GROUPS.items():
        assert f"\n{markdown_table(group)}\n" in doc, f"docs/metrics.md '{title}': print it with python -m fedcore.metrics"
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert len(rows) == len(SCHEMA), "a table row in docs/metrics.md that the schema does not declare"
    keys = [k for m in SCHEMA for k in m.keys]
    assert len(keys) == len(set(keys)) and {m.group for m in SCHEMA} == set(GROUPS)


def test_objectives_are_the_schemas_higher_is_better_metrics():
    from fedcore.metrics import LOWER_IS_BETTER, OBJECTIVES, SCHEMA
    from sweeps import study_file

    assert study_file.OBJECTIVES is OBJECTIVES and study_file.LOWER_IS_BETTER is LOWER_IS_BETTER
    assert {"worst_client_acc", "balancedness", "domain_avg_acc"} <= set(OBJECTIVES)
    assert set(LOWER_IS_BETTER) == {"gap", "spread", "client_acc_std"}
    assert all(m.group in ("client", "class", "local", "personal", "domain") for m in SCHEMA if m.better)


PLACEHOLDER_CASES = {
    "plain": {"model.name": "textcnn", "model.embed_dim": 8, "model.num_filters": 4},
    "teacher": {"model.name": "tiny-bert", "method.name": "fed_lpfm", "teacher.name": "tiny-bert", "teacher.max_len": 16},
    "personalizing": {"model.name": "tiny-bert", "method.name": "fedpurel"},
    "domains": {"data.source": "sklearn:digits?images=1&domains=identity,gray", "data.max_train_samples": 200,
                "data.max_test_samples": 60, "model.name": "tiny-vit", "method.name": "fedit"},
}


@pytest.mark.parametrize("case", list(PLACEHOLDER_CASES))
def test_the_placeholder_row_has_exactly_the_evaluations_keys(case):
    from fedcore.resolve import make_config
    from fedcore.federation import Federation

    over = {"data.source": "synthetic:topics?n=160&test=40", "data.max_len": 16, "partition.num_clients": 3,
            "torch_threads": 1, **PLACEHOLDER_CASES[case]}
    fed = Federation(make_config({}, **over))
    placeholder, evaluated = fed.nan_eval_metrics(), fed.evaluate()
    assert sorted(placeholder) == sorted(evaluated)
    assert all(math.isnan(v) for v in placeholder.values())
    assert any(k.startswith({"plain": "client_acc/", "teacher": "teacher_class_acc/", "personalizing": "gm_",
                             "domains": "domain_acc/"}[case]) for k in placeholder)
