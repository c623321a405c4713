"""Declared contrasts in a report: the numbers it prints equal those recomputed from the MLflow runs
with scipy, paired by seed where the cells share a setting, Welch's t where they do not, Holm over the
family; a metric constant in every cell (a gap 0 by construction) is no test. The store is a real
sqlite MLflow store filled the way a launch fills it (tests/test_report_generic.py's `_launch`)."""
from __future__ import annotations

import csv
import json

import pytest
from scipy import stats as st

from sweeps.contrasts import plan
from sweeps.report import main as report_main
from tests.test_report_generic import _launch

SEEDS = (1, 2, 3, 4, 5)
PARTITION = {0: 0.03, 1: 0.00, 2: 0.12, 3: -0.08, 4: 0.05, 5: -0.10}  # what seed s's partition does to every arm
ARM = {0: 0.0, 1: 0.010, 2: 0.030, 3: 0.000, 4: 0.025, 5: 0.015}  # the pretrained arm's own per-seed noise


def _metrics(model: str, alpha: float, seed: int, rnd: int, stage: str) -> dict:
    """fm_lora's gap is 4 points above textcnn's at alpha 0.1 (plus noise), and every gap is 0 at alpha 5
    (every client holds every class); the partition moves both arms alike."""
    mean = 0.75 + PARTITION[seed] - 0.02 * (3 - rnd) - 0.1 * (stage == "tune")
    if alpha >= 5:
        worst = mean
    else:
        worst = mean - 0.30 - PARTITION[seed] - (0.04 + ARM[seed] if model == "fm_lora" else 0.0)
    return {"round": rnd, "mean_client_acc": mean, "worst_client_acc": worst, "gap": mean - worst,
            "balancedness": worst - 0.05, "global_acc": mean, "diverged": False}


SPECS = [
    {"name": "pretrained minus from scratch", "a": {"model": "fm_lora"}, "b": {"model": ["textcnn", "textcnn_k20"]},
     "metrics": ["gap", "worst_client_acc"], "within": ["alpha"]},
    {"name": "skew interaction", "a": {"model": "fm_lora"}, "b": {"model": "textcnn"}, "metrics": ["gap"],
     "within": ["alpha"], "interaction": "alpha"},
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("contrasts")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    cells = {f"{m}-a{a:g}": {"model": m, "alpha": a, "set": {"partition.num_clients": 10}}
             for m in ("fm_lora", "textcnn") for a in (0.1, 5.0)}
    # the same arm on another partition setting (20 clients): seed s gives other clients, so no pairing
    cells["textcnn_k20-a0.1"] = {"model": "textcnn_k20", "alpha": 0.1, "set": {"partition.num_clients": 20}}
    parent, _ = _launch(uri, "contrast_study", cells, "ag_news", "World,Sports,Business,Sci/Tech", metrics=_metrics,
                        seeds=SEEDS)
    client = MlflowClient(tracking_uri=uri)
    # what the launch records: the declarations as pairs of its cells, by their factor labels
    labels = [(n, {"model": c["model"], "alpha": c["alpha"]}) for n, c in cells.items()]
    client.set_tag(parent, "contrasts", json.dumps(plan(SPECS, labels)))
    out = d / "report"
    assert report_main(["contrast_study", "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    with (out / "contrasts.csv").open() as f:
        rows = list(csv.DictReader(f))
    return client, parent, rows, (out / "table.txt").read_text(), out


def _finals(client, parent) -> dict[str, dict[int, dict]]:
    """cell -> seed -> final-round metrics, straight from the runs."""
    exp = client.get_run(parent).info.experiment_id
    out: dict[str, dict[int, dict]] = {}
    for r in client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'"):
        if r.data.tags["cell.stage"] == "seeds":
            out.setdefault(r.data.tags["cell.name"], {})[int(r.data.params["seed"])] = r.data.metrics
    return out


def _row(rows, a, b, metric, interaction=False):
    [r] = [r for r in rows if r["a"] == a and r["b"] == b and r["metric"] == metric and bool(r["interaction"]) == interaction]
    return r


def test_paired_contrast_equals_scipy_on_the_runs(report):
    client, parent, rows, _, _ = report
    runs = _finals(client, parent)
    a = [runs["fm_lora-a0.1"][s]["gap"] for s in SEEDS]
    b = [runs["textcnn-a0.1"][s]["gap"] for s in SEEDS]
    d = [x - y for x, y in zip(a, b)]
    r = _row(rows, "fm_lora-a0.1", "textcnn-a0.1", "gap")
    lo, hi = st.t.interval(0.95, len(d) - 1, loc=sum(d) / len(d), scale=st.sem(d))
    assert r["pairing"] == "paired" and r["n"] == "5"
    assert float(r["estimate_pp"]) == pytest.approx(100 * sum(d) / len(d), abs=1e-3)
    assert (float(r["ci_lo_pp"]), float(r["ci_hi_pp"])) == pytest.approx((100 * lo, 100 * hi), abs=1e-3)
    assert float(r["p"]) == pytest.approx(st.ttest_rel(a, b).pvalue)
    # pairing matters here: the partition's share of the spread cancels, unpaired it would not resolve
    assert st.ttest_ind(a, b, equal_var=False).pvalue > 0.05 > float(r["p"])


def test_unshared_setting_is_welch(report):
    client, parent, rows, _, _ = report
    runs = _finals(client, parent)
    a = [runs["fm_lora-a0.1"][s]["gap"] for s in SEEDS]
    b = [runs["textcnn_k20-a0.1"][s]["gap"] for s in SEEDS]
    r = _row(rows, "fm_lora-a0.1", "textcnn_k20-a0.1", "gap")
    assert r["pairing"] == "welch"
    assert float(r["p"]) == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)


def test_interaction_and_holm(report):
    client, parent, rows, text, _ = report
    runs = _finals(client, parent)
    per_seed = [(runs["fm_lora-a0.1"][s]["gap"] - runs["textcnn-a0.1"][s]["gap"])
                - (runs["fm_lora-a5"][s]["gap"] - runs["textcnn-a5"][s]["gap"]) for s in SEEDS]
    r = _row(rows, "fm_lora-a0.1", "textcnn-a0.1", "gap", interaction=True)
    assert r["interaction"] == "alpha 0.1 - alpha 5.0"
    assert float(r["estimate_pp"]) == pytest.approx(100 * sum(per_seed) / 5, abs=1e-3)
    assert float(r["p"]) == pytest.approx(st.ttest_1samp(per_seed, 0).pvalue)
    # Holm by hand over the contrasts that test something
    tested = [x for x in rows if x["p"] != ""]
    ps = sorted(float(x["p"]) for x in tested)
    m = len(ps)
    adjusted, running = {}, 0.0
    for i, p in enumerate(ps):
        running = max(running, min(1.0, (m - i) * p))
        adjusted.setdefault(p, running)
    for x in tested:
        assert float(x["p_holm"]) == pytest.approx(adjusted[float(x["p"])])
        assert (x["verdict"] == "resolved") == (float(x["p_holm"]) < 0.05)
    assert "Holm's step-down" in text and "p Holm" in text


def test_constant_metric_is_no_test(report):
    _, _, rows, text, _ = report
    r = _row(rows, "fm_lora-a5", "textcnn-a5", "gap")
    assert r["p"] == "" and r["p_holm"] == "" and float(r["estimate_pp"]) == 0.0
    assert r["verdict"] == "no test: gap is the same constant in every cell compared"
    # the worst-client contrast at alpha 5 is not constant (the partition moves it): it is tested
    assert _row(rows, "fm_lora-a5", "textcnn-a5", "worst_client_acc")["p"] != ""


def test_table_cells_carry_intervals_and_say_what_they_are_over(report):
    client, parent, _, text, out = report
    runs = _finals(client, parent)
    with (out / "table.csv").open() as f:
        table = {r["cell"]: r for r in csv.DictReader(f)}
    vals = [100 * runs["fm_lora-a0.1"][s]["worst_client_acc"] for s in SEEDS]
    lo, hi = st.t.interval(0.95, 4, loc=sum(vals) / 5, scale=st.sem(vals))
    row = table["fm_lora-a0.1"]
    assert (float(row["worst_client_acc_ci_lo_%"]), float(row["worst_client_acc_ci_hi_%"])) == pytest.approx((lo, hi))
    assert "95% Student-t interval of the mean, shown clipped to 0-100] over n seed runs" in text
    assert "seeds 1, 2, 3, 4, 5; disjoint from the tuning trials' seed 0" in text
    assert (out / "worst_client_acc_over_rounds.svg").exists()


def test_study_file_contrasts_validated(tmp_path):
    from sweeps.study_file import StudyFileError, load_study

    body = ("study: toy\nbase: {rounds: 2}\nfactors:\n  method: {key: method.name, values: [fedavg, fedprox]}\n"
            "  alpha: {key: partition.alpha, values: [0.1, 1.0]}\n")
    good = tmp_path / "good.yaml"
    good.write_text(body + "contrasts:\n  - {a: {method: fedprox}, b: {method: fedavg}, metrics: [gap]}\n")
    study = load_study(good)
    [spec] = study.profiles["default"].options["contrasts"]
    assert spec == {"a": {"method": "fedprox"}, "b": {"method": "fedavg"}, "metrics": ["gap"]}
    for bad, message in (("{a: {method: fedprx}, b: {method: fedavg}}", "method has no level 'fedprx'"),
                         ("{a: {methd: fedprox}, b: {method: fedavg}}", "unknown factor 'methd'"),
                         ("{a: {method: fedprox}, b: {method: fedavg}, metrics: [gapp]}", "unknown metric 'gapp'"),
                         ("{a: {method: fedprox}, b: {method: fedavg}, interaction: alpa}", "unknown factor 'alpa'")):
        f = tmp_path / "bad.yaml"
        f.write_text(body + f"contrasts:\n  - {bad}\n")
        with pytest.raises(StudyFileError, match=message):
            load_study(f)


def test_a_study_file_base_seed_moves_the_seed_runs(tmp_path):
    """A base that sets the seed tunes at it; the schedule's seed runs then start after it."""
    import argparse

    from sweeps.launch import cell_plans, plan as launch_plan
    from sweeps.study_file import load_study

    f = tmp_path / "seeded.yaml"
    f.write_text("study: seeded\nbase: {rounds: 1, seed: 3, data: {source: 'synthetic:topics?n=200&test=40'}}\n"
                 "factors:\n  method: {key: method.name, values: [fedavg, fedprox]}\n")
    study = load_study(f)
    args = argparse.Namespace(controls=False, cells=None, device="cpu", set=[], space=[])
    entries = launch_plan(args, study, study.profiles["default"])
    assert {e["cfg"].seed for e in entries} == {3}
    assert [c.tuning_seed for c in cell_plans(entries)] == [3, 3]


def test_float_error_is_no_difference():
    """A gap of mean - worst is 0 up to float error (-1e-17 on some seeds): it is a constant, not a
    difference to test, and its cell shows 0.0 with no spread."""
    from sweeps.contrasts import contrast_rows
    from sweeps.report_common import mean_sd

    def rec(cell, seed, gap):
        return {"cell_name": cell, "seed": seed, "cell": {"model": cell}, "params": {}, "metrics": {"gap": gap}}
    records = [rec("a", s, g) for s, g in ((1, 0.0), (2, -1.3877787807814457e-17), (3, 0.0))]
    records += [rec("b", s, g) for s, g in ((1, 5.551115123125783e-17), (2, 0.0), (3, 0.0))]
    [row] = contrast_rows(records, [{"contrast": "a minus b", "metrics": ["gap"], "interaction": "", "pairs": [["a", "b"]]}])
    assert row["verdict"] == "no test: gap is the same constant in every cell compared"
    s = mean_sd(r["metrics"]["gap"] for r in records[:3])
    assert (s[0], s[1]) == (0.0, 0.0) and str(s[0]) == "0.0"


def test_constant_classifiers_named_by_cell():
    from sweeps.report import collapse_note

    def rec(cell, *accs):
        return {"cell_name": cell, "metrics": {"gap": 0.1, **{f"class_acc/{c}": a for c, a in enumerate(accs)}}}

    healthy = [rec("fm_lora-a0.1", 0.9, 0.2, 0.4), rec("textcnn-a0.1", 0.5, 0.5, 0.01)]
    assert collapse_note(healthy) == ("No seed run ended as a constant classifier (right on at most one class of "
                                      "the global test set; 2 runs checked).")
    # all of class 0 right and none of the others: one class predicted; nan (a class absent from the test set) is not right
    runs = healthy + [rec("textcnn-a0.1", 1.0, 0.0, 0.0), rec("textcnn-a0.1", 0.0, float("nan"), 1.0)]
    assert collapse_note(runs).endswith(": textcnn-a0.1 2 of 3.")
    assert collapse_note([{"cell_name": "x", "metrics": {"gap": 0.1}}]).startswith("No run logged per-class accuracy")
