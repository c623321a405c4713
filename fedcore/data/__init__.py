"""Config -> tensors + client index sets (`FederatedData`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedcore.data.partition import (Partition, PartitionError, cap_per_client, class_filtered, local_split,
                                    partition, pooled_hierarchical, stratified_subsample)
from fedcore.data.sources import DataSourceError, RawDataset, Split, load_source, load_test_split
from fedcore.data.tokenize import build_vocab, cache_dir, cached, content_hash, encode_hf, encode_words

# the pool/test split of a source that has no test split is fixed, whatever the run seed, so
# that runs with different seeds are scored on the same test set
_FIXED_SPLIT_SEED = 0


@dataclass
class FederatedData:
    name: str
    class_names: list[str]
    train_inputs: dict[str, torch.Tensor]  # the whole training pool, tensorized once
    train_labels: torch.Tensor
    test_inputs: dict[str, torch.Tensor]  # the class-balanced global test set
    test_labels: torch.Tensor
    client_train: list[np.ndarray]  # indices into the pool
    client_test: list[np.ndarray]  # indices into the pool (local_split) or test set (class_filtered)
    client_test_on: str  # "pool" or "test"
    client_ids: list[int]  # original client number of each active client
    dropped_clients: list[int]
    vocab_size: int | None = None
    in_features: int | None = None
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)
    domain_names: list[str] | None = None  # where the source has domains (natural or derived)
    train_domains: np.ndarray | None = None
    test_domains: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_clients(self) -> int:
        return len(self.client_train)

    def train_class_counts(self) -> np.ndarray:
        """Per-class count of the whole training pool (docs/metrics.md's "training count",
        which groups classes into Many/Medium/Few): before the clients' local test hold-outs and
        dropped clients are taken out, so the groups do not move with the partition or its seed."""
        return np.bincount(self.train_labels.numpy(), minlength=self.num_classes)


def _subset(split: Split, idx: np.ndarray) -> Split:
    return Split(
        split.labels[idx],
        texts=[split.texts[i] for i in idx] if split.texts is not None else None,
        features=split.features[idx] if split.features is not None else None,
        images=split.images[idx] if split.images is not None else None,
        domains=split.domains[idx] if split.domains is not None else None,
    )


def _pool_and_test(cfg) -> RawDataset:
    ds = load_source(cfg.data.source)
    if cfg.data.test_source:
        ds.test = load_test_split(cfg.data.test_source, ds.class_names, ds.domain_names)
    if ds.test is None:
        labels = ds.train.labels
        test_idx = stratified_subsample(labels, int(round(cfg.data.test_fraction * len(labels))), _FIXED_SPLIT_SEED)
        mask = np.ones(len(labels), bool)
        mask[test_idx] = False
        ds.test, ds.train = _subset(ds.train, test_idx), _subset(ds.train, np.where(mask)[0])
    if cfg.data.max_train_samples:
        ds.train = _subset(ds.train, stratified_subsample(ds.train.labels, cfg.data.max_train_samples, _FIXED_SPLIT_SEED))
    if cfg.data.long_tail_if:
        from fedcore.data.long_tail import long_tail_subsample

        ds.train = _subset(ds.train, long_tail_subsample(ds.train.labels, cfg.data.long_tail_if, _FIXED_SPLIT_SEED))
    if cfg.data.max_test_samples:
        ds.test = _subset(ds.test, stratified_subsample(ds.test.labels, cfg.data.max_test_samples, _FIXED_SPLIT_SEED))
    return ds


def _tensorize(cfg, ds: RawDataset) -> tuple[dict, dict, int | None, int | None]:
    from fedcore.models import input_kind

    want = input_kind(cfg.model.name)
    if want != ds.kind:
        raise DataSourceError(
            f"model.name: {cfg.model.name!r} takes {want} input but {cfg.data.source!r} gives {ds.kind}"
        )
    if ds.kind == "features":
        tr = {"x": torch.as_tensor(ds.train.features)}
        te = {"x": torch.as_tensor(ds.test.features)}
        return tr, te, None, tr["x"].shape[1]
    if ds.kind == "image":  # uint8 N x 3 x H x W; the model normalises and resizes per batch
        tr = {"pixels": torch.as_tensor(ds.train.images).permute(0, 3, 1, 2).contiguous()}
        te = {"pixels": torch.as_tensor(ds.test.images).permute(0, 3, 1, 2).contiguous()}
        return tr, te, None, None
    directory = cache_dir(cfg.cache_dir)
    if cfg.model.name == "textcnn":
        key = content_hash("words-v1", cfg.data.vocab_size, cfg.data.max_len, ds.train.texts, ds.test.texts)

        def build() -> dict:
            vocab = build_vocab(ds.train.texts, cfg.data.vocab_size)
            tr = encode_words(ds.train.texts, vocab, cfg.data.max_len)
            te = encode_words(ds.test.texts, vocab, cfg.data.max_len)
            return {**{f"train.{k}": v for k, v in tr.items()}, **{f"test.{k}": v for k, v in te.items()}}

        vocab_size = cfg.data.vocab_size
    else:
        from fedcore.models.hf_text import load_tokenizer, tokenizer_source

        tok = load_tokenizer(cfg.model.name)
        key = content_hash("hf-v1", tokenizer_source(cfg.model.name), cfg.data.max_len, ds.train.texts, ds.test.texts)

        def build() -> dict:
            tr = encode_hf(ds.train.texts, tok, cfg.data.max_len)
            te = encode_hf(ds.test.texts, tok, cfg.data.max_len)
            return {**{f"train.{k}": v for k, v in tr.items()}, **{f"test.{k}": v for k, v in te.items()}}

        vocab_size = len(tok)
    t = cached(key, directory, build)
    tr = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("train.")}
    te = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("test.")}
    return tr, te, vocab_size, None


def load_raw(cfg) -> RawDataset:
    """The config's pool and global test set, untensorized (DataSourceError where they cannot be read)."""
    return _pool_and_test(cfg)


def check_data(cfg, ds: RawDataset) -> None:
    """What a run would refuse about this data before training (the model's input kind, a partition
    that cannot be built at the config's seed), as DataSourceError / PartitionError; cheap, no tensors."""
    from fedcore.models import input_kind

    want = input_kind(cfg.model.name)
    if want != ds.kind:
        raise DataSourceError(f"model.name: {cfg.model.name!r} takes {want} input but {cfg.data.source!r} gives {ds.kind}")
    _clients(cfg, ds)


def _clients(cfg, ds: RawDataset) -> tuple[Partition, list, list, str]:
    """(partition, client training rows, client test rows, where the test rows index)."""
    if cfg.partition.kind == "pooled":  # its own local test splits (eval.protocol pooled_local)
        part, test_idx = pooled_partition(ds.train.labels, ds.test.labels, cfg.partition, cfg.partition_seed)
        train_idx, test_on = part.clients, "test"
        test_idx = cap_per_client(test_idx, cfg.eval.max_samples_per_client, cfg.partition_seed)
    else:
        part = partition(ds.train.labels, cfg.partition.kind, cfg.partition.num_clients, cfg.partition.alpha,
                         cfg.partition_seed, cfg.partition.empty_clients, ds.train.domains,
                         cfg.partition.classes_per_client, cfg.partition.class_scheme, len(ds.class_names))
    if cfg.eval.protocol == "pooled_local":
        pass
    elif cfg.eval.protocol == "local_split":
        train_idx, test_idx = local_split(part.clients, cfg.partition.local_test_fraction, cfg.partition_seed)
        test_idx = cap_per_client(test_idx, cfg.eval.max_samples_per_client, cfg.partition_seed)
        test_on = "pool"
    else:
        train_idx = part.clients
        test_idx = class_filtered(ds.train.labels, part.clients, ds.test.labels, ds.train.domains, ds.test.domains)
        test_on = "test"
    return part, train_idx, test_idx, test_on


@dataclass
class Pool:
    """What a run's data is before tensors: the raw splits and each client's rows (what a teacher,
    fedcore/teacher.py, reads to score the same rows)."""
    ds: RawDataset
    part: Partition
    client_train: list[np.ndarray]
    client_test: list[np.ndarray]
    client_test_on: str


def read_pool(cfg) -> Pool:
    ds = _pool_and_test(cfg)
    part, train_idx, test_idx, test_on = _clients(cfg, ds)
    return Pool(ds, part, train_idx, test_idx, test_on)


def load_federated(cfg, pool: Pool | None = None) -> FederatedData:
    """The run's data, tensorized, from `pool` (read here when None). Without the teacher's logits:
    the engine's assembly adds them (fedcore.teacher.attach_teacher), the data layer does not call
    models up from below."""
    pool = read_pool(cfg) if pool is None else pool
    ds, part = pool.ds, pool.part
    tr, te, vocab_size, in_features = _tensorize(cfg, ds)
    return FederatedData(
        name=ds.name, class_names=ds.class_names,
        train_inputs=tr, train_labels=torch.as_tensor(ds.train.labels),
        test_inputs=te, test_labels=torch.as_tensor(ds.test.labels),
        client_train=pool.client_train, client_test=pool.client_test, client_test_on=pool.client_test_on,
        client_ids=part.client_ids, dropped_clients=part.dropped,
        vocab_size=vocab_size, in_features=in_features, synthetic=ds.synthetic, notes=list(ds.notes),
        domain_names=ds.domain_names, train_domains=ds.train.domains, test_domains=ds.test.domains,
    )


def pooled_partition(train_labels: np.ndarray, test_labels: np.ndarray, pcfg, seed: int) -> tuple[Partition, list]:
    """The `pooled` partition as a Partition of the training pool, plus each kept client's test rows;
    a client that drew no training sample is dropped (or refused, as for the other kinds)."""
    train, test = pooled_hierarchical(train_labels, test_labels, pcfg.num_clients, pcfg.alpha, seed,
                                      pcfg.fine_alpha, pcfg.coarse)
    dropped = [k for k, t in enumerate(train) if len(t) == 0]
    if dropped and pcfg.empty_clients == "error":
        raise PartitionError(f"partition: clients {dropped} received no training sample (alpha={pcfg.alpha}, "
                             f"seed={seed}); set partition.empty_clients='drop' to run with the others")
    keep = [k for k in range(len(train)) if len(train[k])]
    return Partition([train[k] for k in keep], keep, dropped), [test[k] for k in keep]


def take(inputs: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows `idx` of every input tensor, trimmed to the longest sequence among them."""
    out = {k: v[idx] for k, v in inputs.items() if k != "lengths"}
    if "lengths" in inputs and len(idx):
        longest = int(inputs["lengths"][idx].max())
        for k in ("input_ids", "attention_mask"):
            if k in out:
                out[k] = out[k][:, :longest]
    return out


__all__ = ["FederatedData", "load_federated", "load_raw", "check_data", "take", "DataSourceError"]
