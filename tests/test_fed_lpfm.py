"""Foundation-model priors, part 1: the zero-shot text head, Fed-LPFM's distillation loss and runs,
and the long-tailed pool (docs/methods.md "Fed-LPFM", "Foundation-model priors")."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedcore.config import ConfigError
from fedcore.resolve import make_config
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

    ctx = LocalContext(round=1, client=0, num_samples=2, params=[], start_state={}, batch={"teacher_logits": teacher})
    y = torch.tensor([0, 2])
    ce = F.cross_entropy(student, y).item()
    additive = get_method("fed_lpfm", {"lambda": 0.5, "tau": tau, "form": "additive"})
    assert additive.local_loss(student, y, ctx).item() == pytest.approx(ce + 0.5 * expect, rel=1e-12)


def test_convex_form_is_the_default_and_mixes_ce_and_kd():
    student = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, 0.3], [0.0, 0.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([2, 0, 1])
    ctx = LocalContext(round=1, client=0, num_samples=3, params=[], start_state={}, batch={"teacher_logits": teacher})
    # by hand: mean over the batch of -log softmax(s)_y, and tau^2 * KL with tau = 4
    log_s = student - torch.logsumexp(student, -1, keepdim=True)
    ce = -log_s[torch.arange(3), y].mean().item()
    pt, ps = F.softmax(teacher / 4, -1), F.softmax(student / 4, -1)
    kd = 16 * (pt * (pt.log() - ps.log())).sum(-1).mean().item()
    default = get_method("fed_lpfm", {"tau": 4.0})
    assert (default.params.form, default.params.lam) == ("convex", 0.5)
    assert default.local_loss(student, y, ctx).item() == pytest.approx(0.5 * ce + 0.5 * kd, rel=1e-12)
    for lam in (0.2, 0.9):
        convex = get_method("fed_lpfm", {"lambda": lam, "tau": 4.0})
        assert convex.local_loss(student, y, ctx).item() == pytest.approx((1 - lam) * ce + lam * kd, rel=1e-12)
    # the ends: lambda 0 is the plain cross-entropy, lambda 1 pure distillation (both forms at 0)
    for form in ("convex", "additive"):
        zero = get_method("fed_lpfm", {"lambda": 0.0, "form": form}).local_loss(student, y, ctx)
        assert torch.equal(zero, F.cross_entropy(student, y))
    one = get_method("fed_lpfm", {"lambda": 1.0, "tau": 4.0}).local_loss(student, y, ctx)
    assert torch.equal(one, distillation_loss(student, teacher, 4.0))
    assert get_method("fed_lpfm", {"lambda": 3.0, "form": "additive"}).params.lam == 3.0


def test_convex_lambda_above_one_is_refused_with_one_line():
    with pytest.raises(ConfigError) as e:
        make_config({"method": {"name": "fed_lpfm", "params": {"lambda": 1.5}}})
    assert str(e.value).startswith("invalid config: method.params.lambda: above 1 with form 'convex'")
    assert "allowed: 0 <= lambda <= 1, or form 'additive'" in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).count("1.5") == 1  # the value once: "(got 1.5)"
    with pytest.raises(ConfigError, match=r"method.params.form: Input should be 'convex' or 'additive'"):
        make_config({"method": {"name": "fed_lpfm", "params": {"form": "mixed"}}})


def test_long_tail_profile_matches_fedpurel_cifar100():
    counts = long_tail_counts(50000, 100, 100)
    assert (counts[0], counts[-1], sum(counts)) == (500, 5, 10847)  # docs/methods.md "Foundation-model priors"
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
    lpfm = Federation(make_config(base, **{"method.name": "fed_lpfm", "method.params": {"lambda": 0.5, "tau": 2.0}}))
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


# a tiny federated text task for the engine-level checks: TextCNN students, small synthetic corpus
_TINY = {"data": {"source": "synthetic:topics?n=240&test=60", "max_len": 16}, "partition": {"num_clients": 4},
         "model": {"embed_dim": 8, "num_filters": 4}, "rounds": 2, "batch_size": 16, "max_local_steps": 4,
         "torch_threads": 1, "teacher": {"name": "tiny-bert", "max_len": 16}}


def test_lambda_zero_is_fedavg_bit_for_bit_in_both_forms():
    plain = Federation(make_config(_TINY, **{"method.name": "fedavg"})).run()
    keys = ("global_acc", "train_loss", "balancedness", "worst_client_acc")
    for form in ("convex", "additive"):
        zero = Federation(make_config(_TINY, **{"method.name": "fed_lpfm",
                                                "method.params": {"lambda": 0.0, "form": form}})).run()
        assert [[m[k] for k in keys] for m in zero] == [[m[k] for k in keys] for m in plain]
    mixed = Federation(make_config(_TINY, **{"method.name": "fed_lpfm", "method.params": {"lambda": 0.5}})).run()
    assert mixed[-1]["train_loss"] != plain[-1]["train_loss"]  # the distillation term is in it


# --- Fed-LPFM's teacher ablations (teacher.per_client, teacher.finetune_epochs) ------------------
from fedcore.assembly import load_data  # noqa: E402
from fedcore.data import _pool_and_test  # noqa: E402
from fedcore.models.zero_shot import zero_shot_features  # noqa: E402
from fedcore.teacher import client_teachers, finetune_head, teacher_logits  # noqa: E402

_TEACH = {"data": {"source": "synthetic:topics?n=240&test=60", "max_len": 16},
          "partition": {"num_clients": 4, "kind": "classes", "classes_per_client": 2},
          "method": {"name": "fed_lpfm"}, "teacher": {"name": "tiny-bert", "max_len": 16}}


def _zero_shot(cfg, name=None):
    ds = _pool_and_test(cfg)
    one = cfg.teacher.model_copy(update={"name": name or cfg.teacher.name, "per_client": None, "finetune_epochs": 0})
    return teacher_logits(one, ds.train, ds.test, ds.class_names, ds.kind)


def _held_out(d):
    """Pool rows that are in no client's training data (the local test splits)."""
    mask = torch.ones(len(d.train_labels), dtype=torch.bool)
    mask[torch.as_tensor(np.concatenate(d.client_train))] = False
    return mask


def test_teacher_options_are_off_by_default_and_leave_todays_logits():
    cfg = make_config(_TEACH)
    assert (cfg.teacher.per_client, cfg.teacher.finetune_epochs, cfg.teacher.per_client_heads) == (None, 0, False)
    d = load_data(cfg)
    train, test = _zero_shot(cfg)
    assert torch.equal(d.train_inputs["teacher_logits"], train) and torch.equal(d.test_inputs["teacher_logits"], test)
    # a one-name list is the same teacher everywhere: the per-client machinery changes no bit
    same = load_data(make_config(_TEACH, **{"teacher.per_client": ["tiny-bert"]}))
    assert torch.equal(same.train_inputs["teacher_logits"], train)


def test_per_client_teacher_rows_carry_their_clients_teacher():
    cfg = make_config(_TEACH, seed=3, **{"teacher.per_client": ["tiny-bert", "minilm-l6"]})
    names = client_teachers(cfg.teacher, 4, cfg.partition_seed)
    assert names == ["tiny-bert", "minilm-l6", "tiny-bert", "minilm-l6"]  # seeded: both drawn
    assert names == client_teachers(cfg.teacher, 4, cfg.partition_seed)
    d = load_data(cfg)
    logits = d.train_inputs["teacher_logits"]
    by_name = {n: _zero_shot(cfg, n) for n in set(names)}
    for rows, cid in zip(d.client_train, d.client_ids):
        assert torch.equal(logits[torch.as_tensor(rows)], by_name[names[cid]][0][torch.as_tensor(rows)])
    held = _held_out(d)
    assert held.any() and torch.equal(logits[held], by_name["tiny-bert"][0][held])  # the zero-shot row's rows
    assert torch.equal(d.test_inputs["teacher_logits"], by_name["tiny-bert"][1])
    assert not torch.equal(by_name["tiny-bert"][0], by_name["minilm-l6"][0])
    assert any("client 1 minilm-l6" in n for n in d.notes)


def test_fine_tuned_teacher_fits_its_clients_data_and_keeps_the_zero_shot_row():
    over = {"teacher.name": "minilm-l6", "partition.num_clients": 3}
    cfg = make_config(_TEACH, **over, **{"teacher.finetune_epochs": 3})
    d = load_data(cfg)
    zs_train, zs_test = _zero_shot(cfg)
    y, ft = d.train_labels, d.train_inputs["teacher_logits"]
    gains = []
    for rows in d.client_train:
        r = torch.as_tensor(rows)
        acc = [float((t[r].argmax(-1) == y[r]).float().mean()) for t in (zs_train, ft)]
        assert acc[1] >= acc[0]
        gains.append(acc[1] - acc[0])
    assert max(gains) > 0.1  # on its own local data the fine-tuned head is clearly better
    held = _held_out(d)
    assert torch.equal(ft[held], zs_train[held]) and torch.equal(d.test_inputs["teacher_logits"], zs_test)
    assert torch.equal(ft, load_data(cfg).train_inputs["teacher_logits"])  # deterministic
    # the zero-shot row of a run is the same prior with or without fine-tuned teachers
    run = dict(rounds=1, batch_size=16, max_local_steps=2, torch_threads=1, **{"model.embed_dim": 8,
                                                                               "model.num_filters": 4})
    plain = Federation(make_config(_TEACH, **over, **run)).run()[-1]
    tuned = Federation(make_config(_TEACH, **over, **run, **{"teacher.finetune_epochs": 3})).run()[-1]
    teacher_keys = [k for k in plain if k.startswith("teacher_")]
    assert teacher_keys and all(plain[k] == tuned[k] or (math.isnan(plain[k]) and math.isnan(tuned[k]))
                                for k in teacher_keys)
    assert plain["train_loss"] != tuned["train_loss"]


def test_finetune_head_stays_a_cosine_head_and_learns():
    x = F.normalize(torch.tensor([[1.0, 0.1], [0.9, -0.1], [0.1, 1.0], [-0.1, 0.9]]), dim=-1)
    y = torch.tensor([1, 1, 0, 0])  # the prompts point the wrong way: zero-shot gets all four wrong
    classes = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert ((x @ classes.T).argmax(-1) == y).sum() == 0
    assert torch.allclose(finetune_head(x, y, classes, 10.0, 0, 0.1, seed=0), classes)
    head = finetune_head(x, y, classes, 10.0, 30, 0.1, seed=0)
    assert torch.allclose(head.norm(dim=-1), torch.ones(2))
    assert ((x @ head.T).argmax(-1) == y).all()
    assert torch.equal(head, finetune_head(x, y, classes, 10.0, 30, 0.1, seed=0))


def test_zero_shot_features_factor_the_zero_shot_logits():
    from fedcore.data.sources import Split
    from fedcore.models.clip import ImageZeroShot
    from fedcore.models.zero_shot import TextZeroShot

    texts = Split(np.array([0, 1]), texts=["a match was won", "the markets fell"])
    f = zero_shot_features("tiny-bert", "This text is about {}.", 16, texts, ["sports", "business"], "text")
    logits = TextZeroShot("tiny-bert", "This text is about {}.", 100.0, 16).logits(texts.texts, ["sports", "business"])
    assert torch.equal(100.0 * f["x"] @ f["classes"].T, logits)
    images = Split(np.array([0, 1]), images=np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8))
    g = zero_shot_features("tiny-clip", "a photo of a {}.", 16, images, ["cat", "dog"], "image")
    pix = torch.as_tensor(images.images).permute(0, 3, 1, 2)
    expect = ImageZeroShot("tiny-clip", "a photo of a {}.", 100.0).logits(pix, ["cat", "dog"])
    torch.testing.assert_close(100.0 * g["x"] @ g["classes"].T, expect, atol=1e-5, rtol=0)


def test_teacher_options_are_refused_outside_distillation_and_checked():
    with pytest.raises(ConfigError, match=r"teacher.per_client: \['minilm-l6'\] with method 'fedavg'.*allowed: null"):
        make_config({"teacher": {"per_client": ["minilm-l6"]}})
    with pytest.raises(ConfigError, match=r"teacher.finetune_epochs: 2 with method 'fml'.*allowed: 0, or method "
                                          r"fed_lpfm"):
        make_config({"method": {"name": "fml"}, "teacher": {"finetune_epochs": 2}})
    with pytest.raises(ConfigError, match=r"teacher.per_client: must name at least one teacher"):
        make_config({"method": {"name": "fed_lpfm"}, "teacher": {"per_client": []}})
    with pytest.raises(ConfigError, match=r"teacher.finetune_lr: Input should be greater than 0"):
        make_config({"method": {"name": "fed_lpfm"}, "teacher": {"finetune_lr": 0}})
    cfg = make_config(_TEACH, **{"teacher.per_client": ["tiny-bert", "tiny-clip"]})
    with pytest.raises(ValueError, match=r"teacher.per_client: 'tiny-clip' is a CLIP \(image\) zero-shot head but "
                                         r"the data gives text"):
        load_data(cfg)
