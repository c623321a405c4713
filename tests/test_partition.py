import numpy as np
import pytest

from fedcore.data.partition import (PartitionError, class_filtered, dirichlet_label_skew, iid, local_split,
                                    partition)


def notebook_dirichlet(labels, n_clients, alpha, seed):
    """The FM Fairness Paradox notebook's algorithm, written with numpy's global RNG as there."""
    np.random.seed(seed)
    out = [[] for _ in range(n_clients)]
    for c in range(labels.max() + 1):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        p = np.random.dirichlet(np.repeat(alpha, n_clients))
        splits = (p * len(idx)).astype(int)
        splits[-1] = len(idx) - splits[:-1].sum()
        start = 0
        for k in range(n_clients):
            out[k].extend(idx[start:start + splits[k]].tolist())
            start += splits[k]
    return out


@pytest.fixture
def labels():
    rng = np.random.default_rng(3)
    return rng.integers(0, 4, size=1000)


def test_dirichlet_matches_notebook_exactly(labels):
    for alpha in (0.1, 0.5, 5.0):
        ours = dirichlet_label_skew(labels, 10, alpha, seed=42)
        ref = notebook_dirichlet(labels, 10, alpha, seed=42)
        assert [sorted(a.tolist()) for a in ours] == [sorted(r) for r in ref]


def test_dirichlet_exact_counts_fixed_seed():
    labels = np.repeat(np.arange(3), 10)  # 10 samples per class
    parts = dirichlet_label_skew(labels, 3, 1.0, seed=0)
    counts = np.array([[np.sum(labels[p] == c) for c in range(3)] for p in parts])
    # computed by hand from RandomState(0): floor(p * 10), the remainder to the last client
    rng = np.random.RandomState(0)
    expected = []
    for c in range(3):
        rng.shuffle(np.arange(10))
        p = rng.dirichlet([1.0] * 3)
        k = np.floor(p * 10).astype(int)
        k[-1] = 10 - k[:-1].sum()
        expected.append(k)
    assert (counts == np.array(expected).T).all()
    assert counts.tolist() == [[0, 2, 3], [3, 5, 3], [7, 3, 4]]  # pinned: a change here changes every study


def test_remainder_goes_to_last_client(labels):
    rng = np.random.RandomState(7)
    parts = dirichlet_label_skew(labels, 5, 0.3, seed=7)
    for c in range(4):
        n_c = int(np.sum(labels == c))
        rng.shuffle(np.where(labels == c)[0])
        p = rng.dirichlet([0.3] * 5)
        floors = np.floor(p * n_c).astype(int)
        got = [int(np.sum(labels[q] == c)) for q in parts]
        assert got[:-1] == floors[:-1].tolist()
        assert got[-1] == n_c - floors[:-1].sum()


def test_no_sample_lost_or_duplicated(labels):
    for parts in (dirichlet_label_skew(labels, 7, 0.1, 1), iid(len(labels), 7, 1)):
        allidx = np.concatenate(parts)
        assert len(allidx) == len(labels)
        assert len(np.unique(allidx)) == len(labels)


def test_deterministic_and_seed_sensitive(labels):
    a = dirichlet_label_skew(labels, 10, 0.5, 3)
    b = dirichlet_label_skew(labels, 10, 0.5, 3)
    c = dirichlet_label_skew(labels, 10, 0.5, 4)
    assert all((x == y).all() for x, y in zip(a, b))
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a, c))


def test_empty_clients_dropped_or_refused():
    labels = np.repeat(np.arange(2), 5)
    part = partition(labels, "dirichlet", 8, 0.05, seed=1)
    assert part.dropped, "alpha 0.05 with 8 clients over 10 samples leaves someone empty"
    assert len(part.clients) + len(part.dropped) == 8
    assert all(len(c) > 0 for c in part.clients)
    assert sorted(part.client_ids + part.dropped) == list(range(8))
    with pytest.raises(PartitionError, match="received no sample"):
        partition(labels, "dirichlet", 8, 0.05, seed=1, empty_clients="error")


def test_more_clients_than_samples_is_refused():
    with pytest.raises(PartitionError, match=r"partition.num_clients: 20 clients for 10"):
        partition(np.zeros(10, dtype=int), "iid", 20, 1.0, 0)


def test_local_split_rules():
    clients = [np.arange(10), np.arange(10, 12), np.array([12])]
    train, test = local_split(clients, 0.2, seed=0)
    assert [len(t) for t in test] == [2, 1, 0]  # floor(0.2 n), at least one when n >= 2
    assert [len(t) for t in train] == [8, 1, 1]
    for c, tr, te in zip(clients, train, test):
        assert sorted(np.concatenate([tr, te]).tolist()) == sorted(c.tolist())


def test_class_filtered_keeps_only_training_classes():
    train_labels = np.array([0, 0, 1, 2, 2])
    test_labels = np.array([0, 1, 2, 3, 0, 2])
    out = class_filtered(train_labels, [np.array([0, 1]), np.array([2, 3, 4])], test_labels)
    assert out[0].tolist() == [0, 4]
    assert out[1].tolist() == [1, 2, 5]
