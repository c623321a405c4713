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


# --- class split (partition.kind classes) -------------------------------------------------------
from fedcore.data.partition import assign_classes, class_split, shards  # noqa: E402


def _counts(labels, parts, num_classes):
    return np.array([np.bincount(labels[p], minlength=num_classes) for p in parts])


def _holders(classes, num_classes):
    return [[k for k, cs in enumerate(classes) if c in cs] for c in range(num_classes)]


@pytest.mark.parametrize("num_classes,num_clients,k", [(2, 3, 1), (4, 10, 2), (14, 10, 2), (100, 30, 5),
                                                         (10, 10, 10)])
def test_class_split_exact_counts_cover_every_sample_once(num_classes, num_clients, k):
    rng = np.random.default_rng(num_classes)
    labels = rng.permutation(np.repeat(np.arange(num_classes), rng.integers(1, 40, size=num_classes)))
    classes = assign_classes(num_classes, num_clients, k, seed=5)
    parts = class_split(labels, num_clients, k, seed=5)
    assert all(len(cs) == k == len(set(cs.tolist())) for cs in classes)  # k distinct classes per client
    holders = _holders(classes, num_classes)
    sizes = [len(h) for h in holders]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1  # every class held, holders balanced
    assert sum(sizes) == num_clients * k
    counts = _counts(labels, parts, num_classes)
    for c, members in enumerate(holders):
        n_c, h = int(np.sum(labels == c)), len(members)
        # a class's samples go to its holders only, split evenly: the first n_c mod h get one more
        expect = [n_c // h + (i < n_c % h) for i in range(h)]
        assert counts[members, c].tolist() == expect
        assert counts[:, c].sum() == n_c
    assert all(set(np.unique(labels[p]).tolist()) <= set(cs.tolist()) for p, cs in zip(parts, classes))
    everything = np.concatenate(parts)
    assert len(everything) == len(labels) and np.array_equal(np.sort(everything), np.arange(len(labels)))


def test_class_split_pinned_and_deterministic_and_seed_sensitive():
    labels = np.repeat(np.arange(4), 6)
    a = class_split(labels, 3, 2, seed=0)
    assert [p.tolist() for p in a] == [p.tolist() for p in class_split(labels, 3, 2, seed=0)]
    assert _counts(labels, a, 4).tolist() == [[0, 3, 0, 6], [3, 0, 6, 0], [3, 3, 0, 0]]  # pinned: moves every study
    other = [class_split(labels, 3, 2, seed=s) for s in range(1, 6)]
    assert any([p.tolist() for p in o] != [p.tolist() for p in a] for o in other)
    # the same class sets, other samples: the in-class shuffle follows the seed too
    lab2 = np.repeat(np.arange(2), 10)
    picks = {tuple(class_split(lab2, 2, 2, seed=s)[0].tolist()) for s in range(4)}
    assert len(picks) > 1


def test_class_split_refuses_uncovered_classes_and_impossible_k():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(PartitionError, match=r"partition.classes_per_client: 2 for 4 clients leaves 2 of 10 "
                                             r"classes with no client; allowed: 3..10"):
        class_split(labels, 4, 2, seed=0)
    with pytest.raises(PartitionError, match=r"partition.classes_per_client: 11 for 10 classes; allowed: 1..10"):
        partition(labels, "classes", 4, 0.5, 0, classes_per_client=11)
    with pytest.raises(PartitionError, match=r"partition.class_scheme: unknown 'zigzag'; allowed: even, shards"):
        partition(labels, "classes", 4, 0.5, 0, class_scheme="zigzag")
    # the class count comes from the data's class names where given: a class absent from the pool still counts
    with pytest.raises(PartitionError, match=r"for 12 classes"):
        partition(labels, "classes", 4, 0.5, 0, classes_per_client=13, num_classes=12)


def test_class_split_clients_of_a_thin_class_are_dropped_or_refused():
    labels = np.array([0] * 20 + [1])  # class 1 has one sample for its two holders
    part = partition(labels, "classes", 4, 0.5, seed=0, classes_per_client=1)
    assert part.dropped and sorted(part.client_ids + part.dropped) == [0, 1, 2, 3]
    assert sum(len(p) for p in part.clients) == 21
    with pytest.raises(PartitionError, match=r"received no sample \(classes_per_client=1, seed=0\)"):
        partition(labels, "classes", 4, 0.5, seed=0, classes_per_client=1, empty_clients="error")


def test_shards_are_mcmahans_label_sorted_split():
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 60))  # 600 samples, 20 shards of 30
    parts = shards(labels, 10, 2, seed=3)
    assert [len(p) for p in parts] == [60] * 10
    everything = np.concatenate(parts)
    assert np.array_equal(np.sort(everything), np.arange(600))
    counts = _counts(labels, parts, 10)
    assert all(len(np.flatnonzero(row)) <= 2 for row in counts)  # shards never straddle: 60 is a multiple of 30
    assert set(counts.flatten().tolist()) <= {0, 30, 60}  # whole shards, one or two of a class
    assert [p.tolist() for p in parts] == [p.tolist() for p in shards(labels, 10, 2, seed=3)]
    assert any((p != q).any() for p, q in zip(parts, shards(labels, 10, 2, seed=4)))
    # uneven sizes: the first N mod S shards are one larger, nothing lost
    odd = shards(np.repeat(np.arange(3), [7, 5, 2]), 3, 2, seed=0)
    assert sorted(len(p) for p in odd) == [4, 5, 5] and len(np.unique(np.concatenate(odd))) == 14
    with pytest.raises(PartitionError, match=r"allowed: at most 2"):
        shards(np.zeros(5, int), 2, 3, seed=0)
    via = partition(labels, "classes", 10, 0.5, 3, class_scheme="shards")
    assert [p.tolist() for p in via.clients] == [p.tolist() for p in parts]


def test_classes_kind_through_the_config_and_both_eval_protocols():
    from fedcore.resolve import make_config
    from fedcore.data import load_federated

    base = {"data": {"source": "synthetic:topics?classes=6&n=300&test=60", "max_len": 16},
            "partition": {"kind": "classes", "num_clients": 5, "classes_per_client": 2}}
    local = load_federated(make_config(base))
    y, test_y = local.train_labels.numpy(), local.test_labels.numpy()
    classes = assign_classes(6, 5, 2, seed=0)
    for k, (tr, te) in enumerate(zip(local.client_train, local.client_test)):
        held = set(np.unique(y[np.concatenate([tr, te])]).tolist())
        assert held <= set(classes[k].tolist())  # the local test split follows the client's classes
    filtered = load_federated(make_config(base, **{"eval.protocol": "class_filtered"}))
    for tr, te in zip(filtered.client_train, filtered.client_test):
        assert set(np.unique(test_y[te]).tolist()) == set(np.unique(y[tr]).tolist())
    # alpha is not read by a class split
    other = load_federated(make_config(base, **{"partition.alpha": 3.0}))
    assert all(np.array_equal(a, b) for a, b in zip(local.client_train, other.client_train))
    shards_run = load_federated(make_config(base, **{"partition.class_scheme": "shards"}))
    assert sum(len(a) + len(b) for a, b in zip(shards_run.client_train, shards_run.client_test)) == len(y)


@pytest.mark.parametrize("sets,line", [
    (["partition.classes_per_client=9"], "error: partition.classes_per_client: 9 for 4 classes; allowed: 1..4"),
    (["partition.classes_per_client=1", "partition.num_clients=2"],
     "error: partition.classes_per_client: 1 for 2 clients leaves 2 of 4 classes with no client; allowed: 2..4 "
     "(or more clients)"),
    (["partition.classes_per_client=0"],
     "error: invalid config: partition.classes_per_client: Input should be greater than or equal to 1 (got 0)"),
    (["partition.class_scheme=zigzag"],
     "error: invalid config: partition.class_scheme: Input should be 'even' or 'shards' (got 'zigzag')"),
])
def test_class_split_refusals_are_one_error_line_exit_2(sets, line, capsys):
    from fedcore.run import main

    args = ["--data", "synthetic:topics?n=200&test=40", "--rounds", "1", "--set", "partition.kind=classes"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
