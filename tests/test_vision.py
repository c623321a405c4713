"""Image data (folders, tar archives, derived domains), the domain partitioner and the timm
backbones with LoRA: the same federated LoRA methods run on them unchanged."""
from __future__ import annotations

import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedcore.config import ConfigError
from fedcore.resolve import make_config
from fedcore.data import load_federated
from fedcore.data.images import derive_domains, read_image_folder
from fedcore.data.partition import PartitionError, by_domain, dirichlet_label_skew, partition
from fedcore.data.sources import DataSourceError, load_source
from fedcore.federation import Federation

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DIGITS_DOMAINS = "sklearn:digits?images=1&domains=identity,invert,blur"


def _write_folder(root: Path, domains: list[str], classes: list[str], per: int, size: int = 6) -> dict:
    """A domain/class image folder with known pixel values; returns {relative path: array}."""
    rng = np.random.default_rng(0)
    written = {}
    for d in domains:
        for c in classes:
            (root / d / c).mkdir(parents=True, exist_ok=True)
            for i in range(per):
                arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                rel = f"{d}/{c}/{i:03d}.png"
                Image.fromarray(arr).save(root / rel)
                written[rel] = arr
    return written


def test_image_folder_and_tar_read_the_same_pixels_classes_and_domains(tmp_path):
    written = _write_folder(tmp_path / "data" / "train", ["real", "sketch"], ["cat", "dog", "owl"], per=2)
    tar_path = tmp_path / "train.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tmp_path / "data" / "train", arcname="train")  # one top folder, as CIFAR-10's archives
    from_dir = read_image_folder(tmp_path / "data" / "train", "domain/class")
    from_tar = read_image_folder(tar_path, "domain/class")
    for images, classes, domains, rels in (from_dir, from_tar):
        assert rels == sorted(written)
        assert np.array_equal(images, np.stack([written[r] for r in rels]))  # PNG is lossless
        assert classes == [r.split("/")[1] for r in rels] and domains == [r.split("/")[0] for r in rels]
    ds = load_source(f"images:{tar_path}?layout=domain/class")
    assert ds.kind == "image" and ds.class_names == ["cat", "dog", "owl"] and ds.domain_names == ["real", "sketch"]
    assert np.bincount(ds.train.domains).tolist() == [6, 6] and np.bincount(ds.train.labels).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="layout"):
        read_image_folder(tar_path, "class")  # three levels below the top folder: not a class layout


def test_test_source_domains_and_classes_are_mapped_by_name(tmp_path):
    _write_folder(tmp_path / "tr", ["real", "sketch"], ["cat", "dog"], per=3)
    _write_folder(tmp_path / "te", ["sketch"], ["dog"], per=2)  # a subset: indices differ, names match
    cfg = make_config({"data": {"source": f"images:{tmp_path / 'tr'}?layout=domain/class",
                                "test_source": f"images:{tmp_path / 'te'}?layout=domain/class"},
                       "partition": {"kind": "domain", "num_clients": 2}, "model": {"name": "tiny-vit"},
                       "method": {"name": "fedit"}, "eval": {"protocol": "class_filtered"}})
    fed = load_federated(cfg)
    assert fed.test_labels.tolist() == [1, 1] and fed.test_domains.tolist() == [1, 1]
    # class_filtered with domains: client 0 (real) has no test rows, client 1 (sketch) has both
    assert [len(t) for t in fed.client_test] == [0, 2]


def test_derived_domains_are_equal_shares_of_exact_transforms():
    images = np.random.default_rng(1).integers(0, 256, size=(10, 4, 4, 3), dtype=np.uint8)
    out, dom = derive_domains(images, ["identity", "invert"], seed=0)
    assert np.bincount(dom).tolist() == [5, 5]
    assert np.array_equal(out[dom == 0], images[dom == 0])
    assert np.array_equal(out[dom == 1], 255 - images[dom == 1])
    gray, _ = derive_domains(images, ["gray", "gray"], seed=0)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    with pytest.raises(ConfigError, match="two or more of"):
        make_config({"data": {"source": "sklearn:digits?images=1&domains=sepia,invert"}})


def test_domain_partition_gives_each_client_one_domain_and_covers_it():
    rng = np.random.default_rng(0)
    labels, domains = rng.integers(0, 5, 600), rng.integers(0, 3, 600)
    for alpha in (None, 0.3):
        parts = by_domain(labels, domains, 7, seed=4, alpha=alpha)
        for k, rows in enumerate(parts):
            assert set(domains[rows].tolist()) <= {k % 3}
        for d in range(3):
            mine = np.concatenate([parts[k] for k in range(d, 7, 3)])
            assert sorted(mine.tolist()) == np.where(domains == d)[0].tolist()  # disjoint and complete
    iid_sizes = [len(p) for p in by_domain(labels, domains, 6, seed=4)]
    skew = by_domain(labels, domains, 6, seed=4, alpha=0.05)
    assert all(abs(iid_sizes[k] - iid_sizes[k + 3]) <= 1 for k in range(3))  # an even split inside each domain
    # Dirichlet inside a domain: the paper's label-skew rule on that domain's samples, seeded per domain
    for d in range(3):
        idx = np.where(domains == d)[0]
        expect = dirichlet_label_skew(labels[idx], 2, 0.05, 4 + d)
        assert [skew[d].tolist(), skew[d + 3].tolist()] == [sorted(idx[e].tolist()) for e in expect]
    with pytest.raises(PartitionError, match="at least 3"):
        by_domain(labels, domains, 2, seed=0)
    with pytest.raises(PartitionError, match="needs data with a domain"):
        partition(labels, "domain", 3, 0.5, 0)


def test_vision_model_refuses_text_data_and_too_large_a_rank():
    with pytest.raises(ConfigError, match="above the width 32"):
        make_config({"data": {"source": DIGITS_DOMAINS}, "model": {"name": "tiny-mixer", "lora": {"r": 64}}})
    cfg = make_config({"model": {"name": "tiny-vit"}, "method": {"name": "fedit"}})
    with pytest.raises(DataSourceError, match="takes image input"):
        Federation(cfg)


@pytest.mark.parametrize("method", ["fedit", "ffa_lora", "flora", "flexlora", "hetlora", "raflora", "lora_fair"])
def test_lora_methods_run_unchanged_on_a_vision_backbone(method):
    cfg = make_config({"data": {"source": DIGITS_DOMAINS}, "partition": {"kind": "domain_dirichlet", "num_clients": 6},
                       "model": {"name": "tiny-vit", "lora": {"rank_profile": "uniform", "rank_levels": [8, 4, 2]}},
                       "method": {"name": method}, "optimizer": {"name": "adamw", "lr": 3e-3},
                       "rounds": 2, "batch_size": 32, "max_local_steps": 3, "eval": {"protocol": "class_filtered"},
                       "torch_threads": 1})
    fed = Federation(cfg)
    start_a = {k: v.clone() for k, v in fed.global_state.items() if "lora_A" in k}
    m = fed.run()[-1]
    ranks = fed.server_state.ranks
    assert sorted(set(ranks.tolist())) <= [2, 4, 8] and len(ranks) == 6
    parts = [v for k, v in m.items() if k.startswith("energy_partition/")]
    # the partitions hold the whole update, except FLoRA's stack, whose rank sum_k r_k exceeds r_max
    assert sum(parts) <= 1 + 1e-6 and 0 <= m["energy_outside_shared"] <= 1
    assert math.isclose(sum(parts), 1.0, rel_tol=1e-6) or (method == "flora" and sum(parts) > 0.9)
    assert math.isclose(m["domain_avg_acc"], np.mean([m[f"domain_acc/{n}"] for n in ("identity", "invert", "blur")]))
    assert all(math.isfinite(m[k]) for k in ("global_acc", "worst_client_acc", "comm_bytes_up"))
    if method == "ffa_lora":  # A is frozen on vision models too
        assert all(torch.equal(fed.global_state[k], v) for k, v in start_a.items())
    if method == "flora":  # adapters are re-initialised after the merge: B is zero again
        assert all(not fed.global_state[k].any() for k in fed.global_state if "lora_B" in k)


def test_fedit_on_tiny_mixer_learns_digits_across_derived_domains():
    cfg = make_config({"data": {"source": DIGITS_DOMAINS}, "partition": {"kind": "domain", "num_clients": 6},
                       "model": {"name": "tiny-mixer", "lora": {"r": 8}}, "method": {"name": "fedit"},
                       "optimizer": {"name": "adamw", "lr": 1e-2}, "rounds": 6, "batch_size": 32,
                       "eval": {"protocol": "class_filtered", "every": 3}, "torch_threads": 1})
    m = Federation(cfg).run()[-1]
    assert m["domain_avg_acc"] > 0.35  # chance is 0.1; the head and LoRA learn on a random backbone


@pytest.mark.skipif(not (SHARED / "cifar10" / "test_jpg.tar").is_file(), reason="../shared/data/cifar10 is absent")
def test_cifar10_test_archive_loads_as_ten_balanced_classes():
    ds = load_source(f"images:{SHARED / 'cifar10' / 'test_jpg.tar'}?domains=identity,gray")
    assert ds.train.images.shape == (10000, 32, 32, 3) and ds.class_names[0] == "airplane"
    assert np.bincount(ds.train.labels).tolist() == [1000] * 10
    assert np.bincount(ds.train.domains).tolist() == [5000, 5000]
