"""The fed_lpfm and fedpurel studies: design cells, spaces, the plans of every profile, their report
tables against the formula, and a real launch + report of each (slow)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from search_spaces import fedpurel as pr
from sweeps.launch import main
from sweeps.report_priors import fed_lpfm_rows, fed_lpfm_table, fedpurel_rows, fedpurel_table
from sweeps.studies import get_profile, get_study
from tests.conftest import SHARED_DATA, launch_and_report, study_configs


_configs = study_configs


def test_fed_lpfm_cells_cross_methods_alphas_and_teachers_with_the_teacher_row_everywhere(tmp_path):
    cells = list(_configs("fed_lpfm", "paper", data_dir=str(_image_dir(tmp_path))))
    methods = {c["aggregation"] for c, _, _ in cells}
    assert methods == {"fedavg", "fedprox", "fml", "fed_lpfm"}
    students = ("timm:resnet18", "timm:mobilenetv2_100", "timm:efficientnet_b0")
    teachers = ("clip:ViT-B-16/openai", "clip:ViT-B-32/openai", "clip:ViT-L-14/openai", "clip:RN50/openai")
    lpfm = {(c["model"], c["alpha"], c["teacher"]) for c, _, _ in cells if c["aggregation"] == "fed_lpfm"}
    assert lpfm == {(s, a, t) for s in students for a in (0.01, 0.1, 0.5, 1.0) for t in teachers}
    assert len(cells) == 3 * 4 * (3 + 4)  # baselines once per student and alpha, Fed-LPFM once per teacher
    for cell, space, cfg in cells:
        assert cfg.teacher.name == (cell["teacher"] if cell["aggregation"] == "fed_lpfm" else teachers[0])
        assert cfg.model.init == "random" and cfg.model.tuning == "full" and cfg.partition.alpha == cell["alpha"]
        assert ("method.params.mu" in space) == (cell["aggregation"] == "fedprox")
        if cell["aggregation"] == "fed_lpfm":
            lam = space["method.params.lambda"]
            assert (lam.low, lam.high, lam.log) == (0.1, 2.0, True)
            assert space["method.params.tau"].choices == (1.0, 2.0, 4.0)


def test_fedpurel_cells_and_space_cover_imbalance_heterogeneity_and_the_kl_ablation():
    cells = list(_configs("fedpurel", "local", controls=True))
    got = {(c["aggregation"], c["align"], c["dataset"], c["imbalance"], c["alpha"]) for c, _, _ in cells}
    assert got == {(m, al, ds, i, b) for m, al in (("fedavg", "-"), ("fedpurel", "tkl"), ("fedpurel", "kl"))
                   for ds in ("ag_news", "dbpedia14") for i in (10, 100) for b in (0.1, 1.0)}
    for cell, space, cfg in cells:
        assert cfg.partition.kind == "pooled" and cfg.eval.protocol == "pooled_local"
        assert cfg.data.long_tail_if == cell["imbalance"] and cfg.partition.alpha == cell["alpha"]
        assert cfg.model.head == "zero_shot" and cfg.teacher.name == cfg.model.name  # the zero-shot row is the prior
        if cell["aggregation"] == "fedpurel":
            lam, strength = space["method.params.lambda"], space["method.params.strength"]
            assert (lam.low, lam.high, strength.low, strength.high) == (0.5, 0.99, 0.0, 1.0)
            assert cfg.method.params.get("align", "tkl") == cell["align"]
        else:
            assert set(space) == {"optimizer.lr"}
    ag = [cfg for c, _, cfg in cells if c["dataset"] == "ag_news"][0]
    assert (ag.eval.many_min, ag.eval.few_max) == (1000, 200)  # Many/Medium/Few sized for 4 classes
    assert len(pr.CIFAR100_COARSE) == 100 and sorted(set(pr.CIFAR100_COARSE)) == list(range(20))
    assert all(pr.CIFAR100_COARSE.count(g) == 5 for g in range(20))


def _image_dir(tmp_path):
    for split in ("train", "test"):
        for cls in ("apple", "bee"):
            (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / split / cls / "0.png")
    return tmp_path


@pytest.mark.parametrize("study", ["fed_lpfm", "fedpurel"])
@pytest.mark.parametrize("profile", ["smoke", "local", "paper"])
def test_every_profile_plans(study, profile, tmp_path, capsys):
    extra = ["--device", "cpu"] if profile == "paper" else []
    if profile == "paper":
        extra += ["--data-dir", str(_image_dir(tmp_path))]
    elif profile == "local" and (SHARED_DATA / "dbpedia14" / "meta.txt").is_file():
        extra += ["--data-dir", str(SHARED_DATA)]
    assert main([study, "--profile", profile, "--dry-run", *extra]) == 0
    out = capsys.readouterr().out
    kw = {"data_dir": extra[extra.index("--data-dir") + 1]} if "--data-dir" in extra else {}
    n = len(get_study(study).cells(get_profile(get_study(study), profile, **kw), False))
    assert f"{n} design cells" in out


def test_paper_profiles_need_their_image_folder(capsys):
    assert main(["fedpurel", "--profile", "paper", "--device", "cpu"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["fed_lpfm", "--profile", "local", "--data-dir", "/nonexistent", "--dry-run"]) == 2
    assert "lacks ag_news/train.csv" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "dbpedia14" / "meta.txt").is_file(), reason="../shared/data is absent")
def test_local_dbpedia_reads_its_class_names_from_meta():
    profile = get_profile(get_study("fedpurel"), "local", str(SHARED_DATA))
    src = profile.options["datasets"]["dbpedia14"]["data.source"]
    assert "class_names=Artist,Company,OfficeHolder," in src and src.endswith("Athlete,Film")


def _rec(method, seed, metrics, **cell):
    return {"aggregation": method, "alpha": cell.pop("alpha", 0.1), "model": cell.pop("model", "textcnn"),
            "seed": seed, "run_id": f"{method}{seed}", "metrics": metrics, "cell": cell}


def test_fed_lpfm_rows_average_over_seeds_and_add_the_teacher_row():
    recs = [_rec(m, s, {"global_acc": 0.5 + 0.1 * s + (0.1 if m == "fed_lpfm" else 0), "balancedness": 0.2,
                        "teacher_acc": 0.7, "teacher_balancedness": 0.4},
                 dataset="ag_news", teacher="minilm-l6" if m == "fed_lpfm" else "-", zero_shot="minilm-l6")
            for m in ("fedavg", "fed_lpfm") for s in (0, 1)]
    rows = fed_lpfm_rows(recs)
    assert [r["method"] for r in rows] == ["zero-shot minilm-l6", "fedavg", "fed_lpfm (minilm-l6)"]
    assert rows[0]["alphas"][0.1]["acc"] == (0.7, 0.0)
    assert rows[2]["alphas"][0.1]["acc"][0] == pytest.approx(0.65)
    assert rows[2]["alphas"][0.1]["acc"][1] == pytest.approx(math.sqrt(0.005))
    line = [ln for ln in fed_lpfm_table(rows).splitlines() if ln.startswith("fed_lpfm (minilm-l6)")][0]
    assert "65.0 ±  7.1" in line and "20.0 ±  0.0" in line


def test_fedpurel_rows_put_gm_and_pm_side_by_side_with_the_zero_shot_row():
    def metrics(base):
        keys = ("global_acc", "many_acc", "medium_acc", "few_acc", "balancedness", "mean_client_acc",
                "local_many_acc", "local_medium_acc", "local_few_acc", "local_balancedness")
        out = {k: base + 0.01 * i for i, k in enumerate(keys)}
        out.update({"teacher_" + k: 0.3 for k in ("acc", "many_acc", "medium_acc", "few_acc", "balancedness",
                                                 "mean_client_acc", "local_many_acc", "local_medium_acc",
                                                 "local_few_acc", "local_balancedness")})
        return out
    recs = [_rec("fedpurel", 0, metrics(0.6), dataset="ag_news", imbalance="100", align="tkl", alpha=1.0),
            _rec("fedpurel", 0, metrics(0.5), dataset="ag_news", imbalance="100", align="kl", alpha=1.0),
            _rec("fedavg", 0, metrics(0.4), dataset="ag_news", imbalance="100", align="-", alpha=1.0)]
    rows = fedpurel_rows(recs)
    assert [r["method"] for r in rows] == ["Zero-shot", "FedAvg FT", "FedPuReL", "FedPuReL (KL)"]
    purel = rows[2]
    assert purel["gm_all"][0] == pytest.approx(0.6) and purel["gm_few"][0] == pytest.approx(0.63)
    assert purel["pm_all"][0] == pytest.approx(0.65) and purel["pm_bal"][0] == pytest.approx(0.69)
    assert rows[0]["gm_all"] == (0.3, 0.0) and rows[0]["seeds"] == 1  # the prior's row, once per seed
    table = fedpurel_table(rows)
    assert "ag_news-LT, IF 100, beta 1" in table and "69.77" in table  # beside the paper's CIFAR-100-LT row


_launch_and_report = launch_and_report


def _final(tmp_path, study: str, cell: str) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study)
    [run] = [r for r in client.search_runs([exp.experiment_id])
             if r.data.tags.get("cell.name") == cell and r.data.tags.get("cell.stage") == "seeds"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "balancedness")] == [1, 2, 3]
    return run.data.metrics


@pytest.mark.slow
def test_fedpurel_launch_reports_global_and_personalized_rows_beside_zero_shot(tmp_path):
    _, report = _launch_and_report(tmp_path, "fedpurel", "^(fedavg|fedpurel)-synthetic")
    m = _final(tmp_path, "fedpurel", "fedpurel-synthetic-if10-b1")
    [line] = [ln for ln in report.splitlines() if ln.startswith("FedPuReL ")]
    values = line.replace("±", " ").replace("|", " ").split()
    assert float(values[2]) == pytest.approx(100 * m["global_acc"], abs=0.051)  # GM all
    assert float(values[12]) == pytest.approx(100 * m["mean_client_acc"], abs=0.051)  # PM all
    [zero] = [ln for ln in report.splitlines() if ln.startswith("Zero-shot")]
    assert float(zero.split()[1]) == pytest.approx(100 * m["teacher_acc"], abs=0.051)
    assert 0 <= m["purified_fraction"] <= 1 and m["teacher_acc"] > 0.25
    assert {f.name for f in (tmp_path / "report").iterdir()} == {
        "table.csv", "table.txt", "balancedness_over_rounds.png", "few_over_rounds.png"}


@pytest.mark.slow
def test_fed_lpfm_launch_reports_methods_beside_the_teacher(tmp_path):
    _, report = _launch_and_report(tmp_path, "fed_lpfm", "^(fml|fed_lpfm)-textcnn-synthetic-a1")
    m = _final(tmp_path, "fed_lpfm", "fed_lpfm-textcnn-synthetic-a1-minilm-l6")
    [line] = [ln for ln in report.splitlines() if ln.startswith("fed_lpfm (minilm-l6)")]
    assert float(line.split()[2]) == pytest.approx(100 * m["global_acc"], abs=0.051)
    assert any(ln.startswith("fml ") for ln in report.splitlines())
    assert any(ln.startswith("zero-shot minilm-l6") for ln in report.splitlines())
