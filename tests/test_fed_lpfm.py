"""Foundation-model priors, part 1: the zero-shot text head, Fed-LPFM's distillation loss and runs,
and the long-tailed pool (METHODS.md 2.2, 3.3)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedcore.config import ConfigError, make_config
from fedcore.data.long_tail import long_tail_counts, long_tail_subsample
from fedcore.federation import Federation
from fedcore.methods import get_method
from fedcore.methods.base import LocalContext
from fedcore.methods.fed_lpfm import distillation_loss
from tests.conftest import ag_news_uris, needs_ag_news


def test_distillation_loss_is_tau_squared_kl_teacher_to_student():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]], dtype=torch.float64)
    teacher = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    tau = 2.0

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    expect = np.mean([sum(pt * math.log(pt / ps) for pt, ps in zip(softmax(t / tau), softmax(s / tau)))
                      for s, t in zip(student.numpy(), teacher.numpy())]) * tau ** 2
    assert distillation_loss(student, teacher, tau).item() == pytest.approx(expect, rel=1e-12)
    assert distillation_loss(teacher, teacher, tau).item() == pytest.approx(0.0, abs=1e-12)

    method = get_method("fed_lpfm", {"lambda": 0.5, "tau": tau})
    ctx = LocalContext(round=1, client=0, num_samples=2, params=[], start_state={}, batch={"teacher_logits": teacher})
    y = torch.tensor([0, 2])
    loss = method.local_loss(student, y, ctx)
    assert loss.item() == pytest.approx(F.cross_entropy(student, y).item() + 0.5 * expect, rel=1e-12)


def test_long_tail_profile_matches_fedpurel_cifar100():
    counts = long_tail_counts(50000, 100, 100)
    assert (counts[0], counts[-1], sum(counts)) == (500, 5, 10847)  # METHODS.md 3.3
    assert (sum(c > 100 for c in counts), sum(20 < c <= 100 for c in counts), sum(c <= 20 for c in counts)) == (35, 34, 31)
    labels = np.repeat(np.arange(4), [50, 50, 50, 3])  # the last class has fewer than its share
    idx = long_tail_subsample(labels, 10.0, seed=0)
    assert np.bincount(labels[idx]).tolist() == [min(n, a) for n, a in zip(long_tail_counts(153, 4, 10.0), [50, 50, 50, 3])]
    assert np.array_equal(idx, long_tail_subsample(labels, 10.0, seed=0)) and len(set(idx)) == len(idx)


def test_long_tail_config_builds_a_long_tailed_pool_and_keeps_the_test_set():
    base = {"data": {"source": "synthetic:topics?n=2000&test=400"}, "partition": {"num_clients": 4}}
    plain, lt = Federation(make_config(base)).data, Federation(make_config(base, **{"data.long_tail_if": 20})).data
    assert np.bincount(lt.train_labels.numpy()).tolist() == long_tail_counts(len(plain.train_labels), 4, 20)
    assert torch.equal(plain.test_labels, lt.test_labels)


def test_teacher_config_is_checked_and_implied_by_distillation():
    assert make_config({"method": {"name": "fed_lpfm"}}).teacher.name == "minilm-l6"
    assert make_config({"method": {"name": "fedavg"}}).teacher is None
    with pytest.raises(ConfigError, match="exactly one"):
        make_config({"teacher": {"template": "no slot"}})
    with pytest.raises(ConfigError, match="lambda"):
        make_config({"method": {"name": "fed_lpfm", "params": {"lambda": -1}}})


@needs_ag_news
@pytest.mark.slow
def test_minilm_zero_shot_on_ag_news_is_far_above_chance_and_lambda_zero_is_fedavg():
    train, test = ag_news_uris()
    base = {"data": {"source": train, "test_source": test, "max_len": 32, "max_train_samples": 600,
                     "max_test_samples": 400},
            "partition": {"num_clients": 4, "alpha": 0.5}, "eval": {"protocol": "class_filtered"},
            "rounds": 2, "batch_size": 32, "max_local_steps": 10, "torch_threads": 2,
            "teacher": {"name": "minilm-l6"}}
    lpfm = Federation(make_config(base, **{"method.name": "fed_lpfm", "method.params": {"lambda": 1.0, "tau": 2.0}}))
    runs = lpfm.run()
    assert runs[0]["teacher_acc"] > 0.6  # 4 classes: chance is 0.25; MiniLM's prior is real
    assert runs[0]["teacher_acc"] == runs[1]["teacher_acc"]  # the frozen teacher's row does not move
    # lambda 0: the distillation term vanishes and Fed-LPFM is FedAvg, bit for bit
    zero = Federation(make_config(base, **{"method.name": "fed_lpfm", "method.params": {"lambda": 0.0}})).run()
    plain = Federation(make_config(base, **{"method.name": "fedavg"})).run()
    assert [m["global_acc"] for m in zero] == [m["global_acc"] for m in plain]
    assert [m["train_loss"] for m in zero] == [m["train_loss"] for m in plain]
    # with the teacher the student's loss differs (the KL term is in it)
    assert runs[-1]["train_loss"] != plain[-1]["train_loss"]
