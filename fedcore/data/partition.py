"""Partitioners: IID, Dirichlet label skew, class split (a few classes per client), and by domain
(feature non-IID, optionally with Dirichlet label skew inside each domain), plus client test splits.

All functions return index arrays into the training pool and are deterministic given the seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcore.seeds import Purpose


class PartitionError(ValueError):
    pass


@dataclass
class Partition:
    clients: list[np.ndarray]  # training indices per active client
    client_ids: list[int]  # original client number of each active client
    dropped: list[int]  # client numbers that received no sample


def dirichlet_label_skew(labels: np.ndarray, num_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """docs/data.md "Partitions", as the FM Fairness Paradox notebook does it.

    One RandomState seeded once; for each class c in order: shuffle its indices, draw
    p ~ Dir(alpha * 1_K), give client k floor(p_k * n_c) samples, the last client takes the
    remainder, and hand out contiguous slices of the shuffled indices.
    """
    rng = np.random.RandomState(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        p = rng.dirichlet(np.repeat(alpha, num_clients))
        counts = (p * len(idx)).astype(int)
        counts[-1] = len(idx) - counts[:-1].sum()
        start = 0
        for k in range(num_clients):
            parts[k].append(idx[start : start + counts[k]])
            start += counts[k]
    return [np.concatenate(p).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts]


def _check_classes_per_client(classes_per_client: int, num_classes: int) -> None:
    if not 1 <= classes_per_client <= num_classes:
        raise PartitionError(f"partition.classes_per_client: {classes_per_client} for {num_classes} classes; "
                             f"allowed: 1..{num_classes}")


def assign_classes(num_classes: int, num_clients: int, classes_per_client: int, seed: int) -> list[np.ndarray]:
    """The classes of each client: client after client, the `classes_per_client` classes held by the
    fewest clients so far, ties broken by a seeded permutation. So every class has a client as soon
    as num_clients * classes_per_client >= num_classes (refused otherwise: the samples of a class with
    no client would be lost), and holder counts differ by at most one across classes."""
    _check_classes_per_client(classes_per_client, num_classes)
    if num_clients * classes_per_client < num_classes:
        need = -(-num_classes // num_clients)
        raise PartitionError(
            f"partition.classes_per_client: {classes_per_client} for {num_clients} clients leaves "
            f"{num_classes - num_clients * classes_per_client} of {num_classes} classes with no client; "
            f"allowed: {need}..{num_classes} (or more clients)")
    rng = np.random.default_rng([seed, Purpose.CLASS_ASSIGNMENT])
    holders = np.zeros(num_classes, np.int64)
    out = []
    for _ in range(num_clients):
        order = rng.permutation(num_classes)
        picked = np.sort(order[np.argsort(holders[order], kind="stable")[:classes_per_client]])
        holders[picked] += 1
        out.append(picked)
    return out


def class_split(labels: np.ndarray, num_clients: int, classes_per_client: int, seed: int,
                num_classes: int | None = None) -> list[np.ndarray]:
    """Each client holds `classes_per_client` classes (assign_classes); a class's samples, shuffled
    with the seed, are split evenly among the clients that hold it, in client order: with n_c samples
    and h holders, the first n_c mod h holders get floor(n_c / h) + 1, the others floor(n_c / h)."""
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    classes = assign_classes(num_classes, num_clients, classes_per_client, seed)
    rng = np.random.default_rng([seed, Purpose.CLASS_SPLIT])
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        members = [k for k in range(num_clients) if c in classes[k]]
        idx = rng.permutation(np.where(labels == c)[0])
        for k, rows in zip(members, np.array_split(idx, len(members))):
            parts[k].append(rows)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def shards(labels: np.ndarray, num_clients: int, shards_per_client: int, seed: int) -> list[np.ndarray]:
    """McMahan et al. (2017)'s pathological non-IID split: the samples sorted by label (seeded order
    inside a class), cut into num_clients * shards_per_client contiguous shards of equal size (the
    first N mod S one sample larger), and each client given `shards_per_client` shards drawn at random.
    A client mostly holds that many classes; a shard that straddles a class boundary adds one, and two
    shards of the same class give it fewer."""
    n_shards = num_clients * shards_per_client
    if n_shards > len(labels):
        raise PartitionError(f"partition.classes_per_client: {shards_per_client} shards for each of {num_clients} "
                             f"clients needs {n_shards} samples, the pool has {len(labels)}; allowed: at most "
                             f"{len(labels) // num_clients}")
    rng = np.random.default_rng([seed, Purpose.SHARDS])
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(by_label, n_shards)
    order = rng.permutation(n_shards)
    return [np.sort(np.concatenate([pieces[s] for s in order[k * shards_per_client:(k + 1) * shards_per_client]]))
            .astype(np.int64) for k in range(num_clients)]


def iid(num_samples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    perm = np.random.RandomState(seed).permutation(num_samples)
    return [a.astype(np.int64) for a in np.array_split(perm, num_clients)]


def by_domain(labels: np.ndarray, domains: np.ndarray, num_clients: int, seed: int,
              alpha: float | None = None) -> list[np.ndarray]:
    """Feature non-IID as in LoRA-FAIR: client k holds data of domain k mod D only. A domain's
    samples are split among its clients IID, or with `alpha` by Dirichlet label skew (the same
    rule as dirichlet_label_skew, seeded per domain)."""
    num_domains = int(domains.max()) + 1
    if num_clients < num_domains:
        raise PartitionError(f"partition.num_clients: {num_clients} clients for {num_domains} domains; "
                             f"allowed: at least {num_domains} (one domain per client)")
    parts: list[np.ndarray] = [np.zeros(0, np.int64)] * num_clients
    for d in range(num_domains):
        members = list(range(d, num_clients, num_domains))
        idx = np.where(domains == d)[0]
        if alpha is None:
            split = [idx[s] for s in iid(len(idx), len(members), seed + d)]
        else:
            split = [idx[s] for s in dirichlet_label_skew(labels[idx], len(members), alpha, seed + d)]
        for k, rows in zip(members, split):
            parts[k] = np.sort(rows).astype(np.int64)
    return parts


def _draw(rng: np.random.Generator, weights: list[float]) -> int:
    """An index drawn by the renormalised weights (uniformly if they all underflowed to 0)."""
    w = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(w), p=w / w.sum() if w.sum() > 0 else None))


def pooled_hierarchical(train_labels: np.ndarray, test_labels: np.ndarray, num_clients: int, beta: float,
                        seed: int, fine_alpha: float = 10.0,
                        coarse: list[int] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """FedPuReL's partition (docs/methods.md "FedPuReL", PromptFolio / FedOTP style): the training pool and the
    test set are pooled, and each client draws floor(N_pool / K) samples without replacement: a
    coarse label from its weights ~ Dir(beta), a class of that coarse label from its weights
    ~ Dir(fine_alpha), then a random remaining sample of the class. An exhausted class (and then an
    exhausted coarse label) drops out and the weights are renormalised over the rest. A client's
    samples from the training pool are its training set, those from the test set its local test
    split, so both follow the client's own label distribution. `coarse[c]` is class c's coarse
    label (CIFAR-100's 20 superclasses); None makes every class its own coarse label, and beta
    then is a Dirichlet over classes. Returns (train indices, test indices) per client."""
    labels = np.concatenate([train_labels, test_labels])
    n_train, num_classes = len(train_labels), int(labels.max()) + 1
    coarse_of = np.arange(num_classes) if coarse is None else np.asarray(coarse)
    if len(coarse_of) != num_classes:
        raise PartitionError(f"partition.coarse: {len(coarse_of)} coarse labels for {num_classes} classes; "
                             f"allowed: one per class")
    rng = np.random.default_rng([seed, Purpose.POOLED_HIERARCHICAL])
    remaining = [list(rng.permutation(np.where(labels == c)[0])) for c in range(num_classes)]
    groups = {g: [c for c in range(num_classes) if coarse_of[c] == g] for g in np.unique(coarse_of).tolist()}
    per_client = len(labels) // num_clients
    train, test = [], []
    for _ in range(num_clients):
        groups = {g: cs for g, cs in groups.items() if cs}
        coarse_w = dict(zip(groups, rng.dirichlet(np.repeat(beta, len(groups)))))
        fine_w = {g: dict(zip(cs, rng.dirichlet(np.repeat(fine_alpha, len(cs))))) for g, cs in groups.items()}
        picked = []
        for _ in range(per_client):
            live = [g for g in coarse_w if fine_w[g]]
            if not live:
                break
            g = live[_draw(rng, [coarse_w[g] for g in live])]
            cs = list(fine_w[g])
            c = cs[_draw(rng, [fine_w[g][c] for c in cs])]
            picked.append(remaining[c].pop())
            if not remaining[c]:  # exhausted: renormalised away (here and for later clients)
                for weights in fine_w.values():
                    weights.pop(c, None)
                groups[g] = [x for x in groups[g] if x != c]
        picked = np.sort(np.array(picked, dtype=np.int64))
        train.append(picked[picked < n_train])
        test.append(picked[picked >= n_train] - n_train)
    return train, test


def partition(labels: np.ndarray, kind: str, num_clients: int, alpha: float, seed: int,
              empty_clients: str = "drop", domains: np.ndarray | None = None, classes_per_client: int = 2,
              class_scheme: str = "even", num_classes: int | None = None) -> Partition:
    """Partition of the training pool. `alpha` is read by the Dirichlet kinds only, and
    `classes_per_client`, `class_scheme` and `num_classes` (None: labels.max() + 1) by `classes`."""
    if kind.startswith("domain") and domains is None:
        raise PartitionError(f"partition.kind: {kind!r} needs data with a domain per sample (images:... with "
                             f"layout=domain/class or domains=...); this source has none")
    if num_clients > len(labels):
        raise PartitionError(
            f"partition.num_clients: {num_clients} clients for {len(labels)} training samples; "
            f"allowed: at most {len(labels)}"
        )
    if kind == "iid":
        parts = iid(len(labels), num_clients, seed)
    elif kind == "dirichlet":
        parts = dirichlet_label_skew(labels, num_clients, alpha, seed)
    elif kind == "domain":
        parts = by_domain(labels, domains, num_clients, seed)
    elif kind == "domain_dirichlet":
        parts = by_domain(labels, domains, num_clients, seed, alpha)
    elif kind == "classes":
        parts = _classes(labels, num_clients, classes_per_client, class_scheme, seed, num_classes)
    else:
        raise PartitionError(f"partition.kind: unknown {kind!r}; allowed: iid, dirichlet, domain, domain_dirichlet, "
                             f"classes")
    dropped = [k for k, p in enumerate(parts) if len(p) == 0]
    if dropped and empty_clients == "error":
        why = f"classes_per_client={classes_per_client}" if kind == "classes" else f"alpha={alpha}"
        raise PartitionError(
            f"partition: clients {dropped} received no sample ({why}, seed={seed}); "
            f"set partition.empty_clients='drop' to run with the others"
        )
    keep = [k for k, p in enumerate(parts) if len(p) > 0]
    return Partition([parts[k] for k in keep], keep, dropped)


def _classes(labels: np.ndarray, num_clients: int, classes_per_client: int, scheme: str, seed: int,
             num_classes: int | None) -> list[np.ndarray]:
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if scheme == "even":
        return class_split(labels, num_clients, classes_per_client, seed, num_classes)
    if scheme == "shards":
        _check_classes_per_client(classes_per_client, num_classes)
        return shards(labels, num_clients, classes_per_client, seed)
    raise PartitionError(f"partition.class_scheme: unknown {scheme!r}; allowed: even, shards")


def local_split(clients: list[np.ndarray], fraction: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Hold out floor(fraction * n_k) of each client's samples (at least one when n_k >= 2).

    A client with a single sample keeps it for training and has an empty test split, which the
    metrics report as missing rather than as zero.
    """
    train, test = [], []
    for k, idx in enumerate(clients):
        rng = np.random.default_rng([seed, Purpose.LOCAL_TEST, k])
        perm = idx[rng.permutation(len(idx))]
        n_test = int(np.floor(fraction * len(idx)))
        if fraction > 0 and n_test == 0 and len(idx) >= 2:
            n_test = 1
        test.append(np.sort(perm[:n_test]))
        train.append(np.sort(perm[n_test:]))
    return train, test


def class_filtered(train_labels: np.ndarray, clients: list[np.ndarray], test_labels: np.ndarray,
                   train_domains: np.ndarray | None = None, test_domains: np.ndarray | None = None) -> list[np.ndarray]:
    """The paper's protocol: the global test set restricted to each client's training classes
    (and, given domains, to the client's own domains)."""
    out = []
    for idx in clients:
        keep = np.isin(test_labels, np.unique(train_labels[idx]))
        if train_domains is not None and test_domains is not None:
            keep &= np.isin(test_domains, np.unique(train_domains[idx]))
        out.append(np.where(keep)[0].astype(np.int64))
    return out


def stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of about n samples keeping class proportions (sorted)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, Purpose.STRATIFIED_SUBSAMPLE])
    classes = np.unique(labels)
    picked = []
    for c in classes:
        idx = np.where(labels == c)[0]
        take = max(1, int(round(n * len(idx) / len(labels))))
        picked.append(rng.choice(idx, size=min(take, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def cap_per_client(indices: list[np.ndarray], cap: int | None, seed: int) -> list[np.ndarray]:
    if cap is None:
        return indices
    out = []
    for k, idx in enumerate(indices):
        if len(idx) > cap:
            rng = np.random.default_rng([seed, Purpose.CLIENT_CAP, k])
            idx = np.sort(rng.choice(idx, size=cap, replace=False))
        out.append(idx)
    return out
