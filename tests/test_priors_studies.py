"""The fed_lpfm and fedpurel studies: design cells, spaces, the plans of every profile, their report
tables against the formula, and a real launch + report of each (slow)."""
from __future__ import annotations

import math
import re

import pytest

from sweeps.launch import main
from sweeps.report_priors import fed_lpfm_report, fed_lpfm_rows, fed_lpfm_table, fedpurel_rows, fedpurel_table
from sweeps.studies import get_profile, get_study
from tests.conftest import SHARED_DATA, image_folders, launch_and_report, study_configs, study_plan


_configs = study_configs


def test_fed_lpfm_cells_cross_methods_partitions_and_teachers_with_the_teacher_row_everywhere(tmp_path):
    cells = list(_configs("fed_lpfm", "paper", data_dir=str(_image_dir(tmp_path))))
    methods = {c["aggregation"] for c, _, _ in cells}
    assert methods == {"fedavg", "fedprox", "fml", "fed_lpfm"}
    students = ("timm:resnet18", "timm:mobilenetv2_100", "timm:efficientnet_b0")
    teachers = ("clip:ViT-B-16/openai", "clip:ViT-B-32/openai", "clip:ViT-L-14/openai", "clip:RN50/openai")
    levels = [f"a{a:g}" for a in (0.01, 0.1, 0.5, 1.0)] + ["c2"]  # Dirichlet alphas and the class split
    names = [n for n, _, _, _ in study_plan("fed_lpfm", "paper", data_dir=str(_image_dir(tmp_path)))]
    lpfm = {(c["model"], n.split("-")[3], c["teacher"]) for n, (c, _, _) in zip(names, cells) if c["aggregation"] == "fed_lpfm"}
    assert lpfm == {(s, lv, t) for s in students for lv in levels for t in teachers}
    assert len(cells) == 3 * 5 * (3 + 4)  # baselines once per student and partition, Fed-LPFM once per teacher
    assert len(set(names)) == len(cells)
    for name, (cell, space, cfg) in zip(names, cells):
        assert cfg.teacher.name == (cell["teacher"] if cell["aggregation"] == "fed_lpfm" else teachers[0])
        assert cfg.teacher.per_client is None and cfg.teacher.finetune_epochs == 0  # the ablations are controls
        assert cfg.model.init == "random" and cfg.model.tuning == "full"
        if cell["partition"] == "classes":
            assert (cfg.partition.kind, cfg.partition.classes_per_client) == ("classes", 2)
            assert name.split("-")[3] == "c2"
        else:
            assert cfg.partition.kind == "dirichlet" and cfg.partition.alpha == cell["alpha"]
        assert ("method.params.mu" in space) == (cell["aggregation"] == "fedprox")
        if cell["aggregation"] == "fed_lpfm":
            lam = space["method.params.lambda"]
            assert (lam.low, lam.high, lam.log) == (0.1, 0.9, False)  # the convex form: lambda in [0, 1]
            assert cfg.method.params["form"] == "convex" and cfg.method.params["lambda"] == 0.1
            assert space["method.params.tau"].choices == (1.0, 2.0, 4.0)


def test_fed_lpfm_smoke_adds_two_class_split_cells_and_controls_add_the_teacher_ablations(tmp_path):
    names = [n for n, _, _, _ in study_plan("fed_lpfm", "smoke")]
    assert len(names) == 11 and names[-3:] == ["fedavg-textcnn-synthetic-c2", "fedprox-textcnn-synthetic-c2",
                                               "fed_lpfm-textcnn-synthetic-c2-minilm-l6"]
    extra = {n: cfg for n, _, _, cfg in study_plan("fed_lpfm", "smoke", controls=True) if n not in names}
    assert set(extra) == {f"fed_lpfm-textcnn-synthetic-{lv}-{v}" for lv in ("a0.1", "a1", "c2")
                          for v in ("minilm-l6-ft", "perclient")}
    for name, cfg in extra.items():
        assert cfg.teacher.name == "minilm-l6"  # the zero-shot row stays the first teacher's
        if name.endswith("-ft"):
            assert (cfg.teacher.finetune_epochs, cfg.teacher.per_client) == (2, None)
        else:
            assert (cfg.teacher.finetune_epochs, cfg.teacher.per_client) == (0, ["minilm-l6", "tiny-bert"])
    paper = [(c, cfg) for c, _, cfg in _configs("fed_lpfm", "paper", controls=True, data_dir=str(_image_dir(tmp_path)))]
    per_client = [cfg for c, cfg in paper if c["teacher_variant"] == "per_client"]
    assert len(per_client) == 3 * 5 and all(cfg.teacher.per_client == [
        "clip:ViT-B-16/openai", "clip:ViT-B-32/openai", "clip:ViT-L-14/openai", "clip:RN50/openai"] for cfg in per_client)
    assert {cfg.teacher.finetune_epochs for c, cfg in paper if c["teacher_variant"] == "finetuned"} == {3}


def test_fedpurel_cells_and_space_cover_imbalance_heterogeneity_and_the_kl_ablation(tmp_path):
    methods = (("fedavg", "-"), ("fedpurel", "tkl"), ("fedpurel", "kl"))
    paper = list(_configs("fedpurel", "paper", controls=True, data_dir=str(_image_dir(tmp_path, 100))))
    assert {(c["aggregation"], c["align"], c["dataset"], c["imbalance"], c["alpha"]) for c, _, _ in paper} == {
        (m, al, "cifar100", i, b) for m, al in methods for i in (10, 50, 100) for b in (0.1, 0.5, 1.0, 5.0)}
    # sized for 2 cores: both text corpora at the study's hardest end only
    cells = list(_configs("fedpurel", "local", controls=True))
    got = {(c["aggregation"], c["align"], c["dataset"], c["imbalance"], c["alpha"]) for c, _, _ in cells}
    assert got == {(m, al, ds, 100, 0.1) for m, al in methods for ds in ("ag_news", "dbpedia14")}
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
    coarse = next(cfg for _, _, cfg in _configs("fedpurel", "paper", data_dir=str(_image_dir(tmp_path, 100)))
                  ).partition.coarse  # CIFAR-100's superclasses, in the study file
    assert len(coarse) == 100 and sorted(set(coarse)) == list(range(20))
    assert all(coarse.count(g) == 5 for g in range(20))


def _image_dir(tmp_path, classes=10):
    # CIFAR-10's class count (CIFAR-100's for FedPuReL's coarse groups); 3 images each for 20 clients
    return image_folders(tmp_path, [f"class{c:03d}" for c in range(classes)], 3)


@pytest.mark.parametrize("study", ["fed_lpfm", "fedpurel"])
@pytest.mark.parametrize("profile", ["smoke", "local", "paper"])
def test_every_profile_plans(study, profile, tmp_path, capsys):
    extra = ["--device", "cpu"] if profile == "paper" else []
    if profile == "paper":
        extra += ["--data-dir", str(_image_dir(tmp_path, 100 if study == "fedpurel" else 10))]
    elif profile == "local" and (SHARED_DATA / "dbpedia14" / "meta.txt").is_file():
        extra += ["--data-dir", str(SHARED_DATA)]
    assert main([study, "--profile", profile, "--dry-run", *extra]) == 0
    out = capsys.readouterr().out
    kw = {"data_dir": extra[extra.index("--data-dir") + 1]} if "--data-dir" in extra else {}
    n = len(study_plan(study, profile, **kw))
    assert f"{n} design cells" in out


def test_paper_profiles_need_their_image_folder(capsys):
    assert main(["fedpurel", "--profile", "paper", "--device", "cpu"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["fed_lpfm", "--profile", "local", "--data-dir", "/nonexistent", "--dry-run"]) == 2
    assert "lacks ag_news/train.csv" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "dbpedia14" / "meta.txt").is_file(), reason="../shared/data is absent")
def test_local_dbpedia_reads_its_class_names_from_meta():
    profile = get_profile(get_study("fedpurel", "local"), "local", str(SHARED_DATA))
    src = profile.options["datasets"]["dbpedia14"]["data.source"]
    assert "class_names=Artist,Company,OfficeHolder," in src and src.endswith("Athlete,Film")


def _rec(method, seed, metrics, **cell):
    return {"aggregation": method, "alpha": cell.pop("alpha", 0.1), "model": cell.pop("model", "textcnn"),
            "seed": seed, "run_id": f"{method}{seed}", "metrics": metrics, "cell": cell}


def test_fed_lpfm_rows_average_over_seeds_and_add_the_teacher_row():
    recs = [_rec(m, s, {"global_acc": 0.5 + 0.1 * s + (0.1 if m == "fed_lpfm" else 0), "balancedness": 0.2,
                        "teacher_acc": 0.7, "teacher_balancedness": 0.4},
                 dataset="ag_news", teacher="minilm-l6" if m == "fed_lpfm" else "-", zero_shot="minilm-l6",
                 partition="dirichlet", teacher_variant="zero_shot" if m == "fed_lpfm" else "-")
            for m in ("fedavg", "fed_lpfm") for s in (0, 1)]
    rows = fed_lpfm_rows(recs)
    assert [r["method"] for r in rows] == ["zero-shot minilm-l6", "fedavg", "fed_lpfm (minilm-l6)"]
    assert rows[0]["levels"]["alpha 0.1"]["acc"] == (0.7, 0.0)
    assert rows[2]["levels"]["alpha 0.1"]["acc"][0] == pytest.approx(0.65)
    assert rows[2]["levels"]["alpha 0.1"]["acc"][1] == pytest.approx(math.sqrt(0.005))
    line = [ln for ln in fed_lpfm_table(rows).splitlines() if ln.startswith("fed_lpfm (minilm-l6)")][0]
    assert "65.0 ±  7.1" in line and "20.0 ±  0.0" in line


def test_fed_lpfm_rows_name_the_partition_and_the_teacher_ablation():
    def rec(method, seed, acc, **cell):
        return _rec(method, seed, {"global_acc": acc, "balancedness": acc / 2, "teacher_acc": 0.6,
                                   "teacher_balancedness": 0.3}, dataset="ag_news", zero_shot="minilm-l6", **cell)
    split = {"partition": "classes", "classes_per_client": "2", "alpha": 0.0}
    recs = [rec("fedavg", 0, 0.40, teacher="-", partition="dirichlet", alpha=0.1),
            rec("fedavg", 0, 0.30, teacher="-", **split),
            rec("fed_lpfm", 0, 0.55, teacher="minilm-l6", teacher_variant="zero_shot", **split),
            rec("fed_lpfm", 0, 0.50, teacher="minilm-l6", teacher_variant="finetuned", **split),
            rec("fed_lpfm", 0, 0.45, teacher="per-client", teacher_variant="per_client",
                per_client="minilm-l6|tiny-bert", **split)]
    rows = {r["method"]: r for r in fed_lpfm_rows(recs)}
    assert set(rows) == {"zero-shot minilm-l6", "fedavg", "fed_lpfm (minilm-l6)", "fed_lpfm (minilm-l6, fine-tuned)",
                         "fed_lpfm (per-client minilm-l6/tiny-bert)"}
    assert set(rows["fedavg"]["levels"]) == {"alpha 0.1", "classes 2"}  # one column per partition, not merged
    one = rows["fedavg"]["levels"]["classes 2"]["acc"]  # one seed: a mean, no sd and no interval
    assert one[0] == 0.3 and math.isnan(one[1]) and one.n == 1 and math.isnan(one.lo)
    assert rows["fed_lpfm (minilm-l6, fine-tuned)"]["levels"]["classes 2"]["acc"][0] == 0.5
    table = fed_lpfm_table(list(rows.values()))
    head = [ln for ln in table.splitlines() if ln.startswith("method")][0]
    assert head.index("alpha 0.1: acc") < head.index("classes 2: acc")  # Dirichlet levels, then class splits
    line = [ln for ln in table.splitlines() if ln.startswith("fed_lpfm (minilm-l6, fine-tuned)")][0]
    # no alpha-0.1 run of this method: dashes there, then the class split's acc and bal
    assert line.split()[3:] == ["-", "-", "-", "1", "50.0", "±", "-", "[-]", "25.0", "±", "-", "[-]"]


def test_fed_lpfm_report_writes_one_csv_row_per_partition_level(tmp_path):
    recs = [_rec("fedavg", 0, {"global_acc": 0.4, "balancedness": 0.1, "teacher_acc": 0.6, "teacher_balancedness": 0.3},
                 dataset="ag_news", teacher="-", zero_shot="minilm-l6", partition="dirichlet", alpha=0.1),
            _rec("fedavg", 0, {"global_acc": 0.3, "balancedness": 0.0, "teacher_acc": 0.6, "teacher_balancedness": 0.3},
                 dataset="ag_news", teacher="-", zero_shot="minilm-l6", partition="classes", classes_per_client="2",
                 alpha=0.0)]
    text, files = fed_lpfm_report(None, None, recs, tmp_path)
    assert [f.name for f in files] == ["table.csv", "accuracy_vs_partition.png"] and files[1].stat().st_size > 0
    lines = files[0].read_text().splitlines()
    assert lines[0].startswith("dataset,student,method,partition,seeds,acc")
    assert [ln.split(",")[2:5] for ln in lines[1:]] == [["zero-shot minilm-l6", "alpha 0.1", "1"],
                                                         ["zero-shot minilm-l6", "classes 2", "1"],
                                                         ["fedavg", "alpha 0.1", "1"], ["fedavg", "classes 2", "1"]]
    assert "classes 2: acc" in text


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
    assert purel["pm_all"][0] == pytest.approx(0.65) and purel["pm_balancedness"][0] == pytest.approx(0.69)
    assert rows[0]["gm_all"][0] == 0.3 and rows[0]["seeds"] == 1  # the prior's row, once per seed
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
    values = re.findall(r"(-?\d+\.\d) ±", line)  # GM all, many, medium, few, balancedness, then PM's
    assert float(values[0]) == pytest.approx(100 * m["global_acc"], abs=0.051)  # GM all
    assert float(values[5]) == pytest.approx(100 * m["mean_client_acc"], abs=0.051)  # PM all
    [zero] = [ln for ln in report.splitlines() if ln.startswith("Zero-shot")]
    assert float(zero.split()[1]) == pytest.approx(100 * m["teacher_acc"], abs=0.051)
    assert 0 <= m["purified_fraction"] <= 1 and m["teacher_acc"] > 0.25
    assert {f.name for f in (tmp_path / "report").iterdir()} == {
        "table.csv", "table.txt", "launch.txt", "contrasts.csv", "balancedness_over_rounds.png", "few_over_rounds.png",
        "balancedness_over_rounds.svg", "few_over_rounds.svg"}


@pytest.mark.slow
def test_fed_lpfm_launch_reports_methods_beside_the_teacher(tmp_path):
    _, report = _launch_and_report(tmp_path, "fed_lpfm", "^(fml|fed_lpfm)-textcnn-synthetic-a1")
    m = _final(tmp_path, "fed_lpfm", "fed_lpfm-textcnn-synthetic-a1-minilm-l6")
    [line] = [ln for ln in report.splitlines() if ln.startswith("fed_lpfm (minilm-l6)")]
    assert float(re.findall(r"(-?\d+\.\d) ±", line)[0]) == pytest.approx(100 * m["global_acc"], abs=0.051)
    assert any(ln.startswith("fml ") for ln in report.splitlines())
    assert any(ln.startswith("zero-shot minilm-l6") for ln in report.splitlines())
