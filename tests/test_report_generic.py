"""The generic report, the tidy export and the data-dependent paper references, on a real sqlite MLflow
store filled the way a launch fills it (sweeps/tracking.py's own functions; no Ray run needed)."""
from __future__ import annotations

import csv
import math
import re
import statistics

import pytest

from sweeps.report import main as report_main

METHODS, ALPHAS, SEEDS, ROUNDS = ("fedavg", "fedprox"), (0.1, 1.0), (0, 1), (1, 2, 3)
AG_CLASSES = "World,Sports,Business,Sci/Tech"


class _Trial:  # what TrialTracker reads of a Tune trial: its config and its name
    def __init__(self, name, config):
        self.name, self.config = name, config

    def __str__(self):
        return self.name


def _metrics(method: str, alpha: float, seed: int, rnd: int, stage: str) -> dict:
    """A trial's result at a round (fractions); the final round is rnd 3. Tuning trials score lower."""
    mean = 0.70 + 0.05 * (method == "fedprox") + 0.10 * (alpha == 1.0) + 0.01 * seed - 0.05 * (3 - rnd) \
        - 0.1 * (stage == "tune")
    worst = mean - (0.30 if alpha == 0.1 else 0.05) - 0.02 * seed
    t_mean = 0.50 + 0.10 * (alpha == 1.0) + 0.01 * seed  # the zero-shot head: the same for both methods
    return {"round": rnd, "mean_client_acc": mean, "worst_client_acc": worst, "gap": mean - worst,
            "balancedness": worst - 0.03, "global_acc": mean + 0.01, "diverged": False, "trial_id": "abc",
            "client_acc/0": worst, "client_acc/1": mean, "teacher_mean_client_acc": t_mean,
            "teacher_worst_client_acc": t_mean - 0.2, "teacher_acc": t_mean + 0.01, "teacher_balancedness": t_mean - 0.3}


def _launch(uri: str, study: str, cells: dict[str, dict], data_name: str | None, classes: str | None,
            metrics=_metrics, on_parent: bool = False, seeds=SEEDS) -> tuple[str, int]:
    """A finished launch of `study`: per cell one tuning trial and a trial per seed, every round logged,
    the data tags on each trial (on the parent run only with `on_parent`); a cell's `set` adds config
    fields to its trials; (parent run id, number of trials)."""
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import TrialTracker, end_run, log_metrics, log_params, start_parent_run

    exp_id, parent = start_parent_run(uri, study, "smoke", [study], "/tmp/tune", "/tmp/storage")
    client = MlflowClient(tracking_uri=uri)
    tracker = TrialTracker(uri, study, parent, {n: {**{k: v for k, v in c.items() if k != "set"}, "name": n}
                                                for n, c in cells.items()})
    trials = 0
    for name, cell in cells.items():
        for stage, seed in [("tune", None)] + [("seeds", s) for s in seeds]:
            config = {"_base": {"data": {"max_len": 16}}, "partition.alpha": cell.get("alpha", 0.5),
                      "method.name": cell.get("method", cell.get("aggregation")), "optimizer.lr": 0.01 * (1 + trials % 3),
                      "_cell": name, "_stage": stage, **({} if seed is None else {"seed": seed}), **cell.get("set", {})}
            trial = _Trial(f"trainable_{trials:05d}", config)
            run_id = client.create_run(exp_id, tags=tracker.trial_tags(trial), run_name=str(trial)).info.run_id
            log_params(client, run_id, config)
            for rnd in ROUNDS:
                log_metrics(client, run_id, metrics(cell.get("method", cell.get("aggregation", cell.get("model"))),
                                                    cell["alpha"], seed or 0, rnd, stage), rnd)
            for key, value in (("data_name", data_name), ("data_classes", classes)):
                if value is not None:
                    client.set_tag(parent if on_parent else run_id, key, value)
            client.set_terminated(run_id, "FINISHED")
            trials += 1
    end_run(uri, parent, "FINISHED")
    return parent, trials


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("generic")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    cells = {f"{m}-a{a:g}": {"method": m, "alpha": a} for m in METHODS for a in ALPHAS}
    parent, trials = _launch(uri, "toy_study", cells, "ag_news", AG_CLASSES)
    return uri, d, parent, trials


def _csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_generic_report_table_curves_and_factor_plots(store, capsys):
    uri, d, parent, _ = store
    out = d / "report"
    assert report_main(["toy_study", "--tracking-uri", uri, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    print(text)
    assert "toy_study (generic report)" in text and "8 seed runs; data ag_news (World, Sports, Business, Sci/Tech" in text
    rows = {r["cell"]: r for r in _csv(out / "table.csv") if r["cell"] != "zero-shot"}
    # by hand: fedavg at alpha 0.1, seeds 0 and 1, final round: mean acc 0.70 and 0.71, worst 0.40 and 0.39
    fedavg = rows["fedavg-a0.1"]
    assert fedavg["method"] == "fedavg" and fedavg["n"] == "2" and fedavg["worst_client_acc_n"] == "2"
    assert float(fedavg["mean_client_acc_%"]) == pytest.approx(70.5)
    assert float(fedavg["mean_client_acc_sd_%"]) == pytest.approx(100 * math.sqrt(0.5 * 0.01 ** 2))
    assert float(fedavg["worst_client_acc_%"]) == pytest.approx(39.5)
    assert float(fedavg["gap_%"]) == pytest.approx(31.0) and float(fedavg["gap_sd_%"]) == pytest.approx(1.4142136)
    # every cell against the formula
    for m in METHODS:
        for a in ALPHAS:
            row = rows[f"{m}-a{a:g}"]
            for key in ("mean_client_acc", "worst_client_acc", "gap", "balancedness", "global_acc"):
                vals = [_metrics(m, a, s, 3, "seeds")[key] for s in SEEDS]
                assert float(row[f"{key}_%"]) == pytest.approx(100 * statistics.fmean(vals))
                assert float(row[f"{key}_sd_%"]) == pytest.approx(100 * statistics.stdev(vals))
    # the zero-shot head scores alike across methods: one row per alpha, method '-'
    zero = {r["alpha"]: r for r in _csv(out / "table.csv") if r["cell"] == "zero-shot"}
    assert set(zero) == {"0.1", "1.0"} and zero["0.1"]["method"] == "-" and zero["0.1"]["n"] == "2"
    assert float(zero["1.0"]["mean_client_acc_%"]) == pytest.approx(60.5)
    assert float(zero["1.0"]["gap_%"]) == pytest.approx(20.0)
    # the printed table: percent, the metric word balancedness, n
    [line] = [ln for ln in text.splitlines() if ln.startswith("fedavg-a0.1 ")]
    assert " 70.5 ±  0.7" in line and " 39.5 ±  0.7" in line and line.split()[3] == "2"
    assert "balancedness" in text and "percent" in text and "METHODS.md" not in text
    for name in ("worst_client_acc_over_rounds.png", "mean_client_acc_over_rounds.png", "metrics_vs_alpha.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000
    assert not (out / "metrics_vs_method.png").exists()  # not a numeric factor


def test_tidy_export_one_row_per_trial_and_round(store, capsys):
    uri, d, parent, trials = store
    path = d / "export" / "launch.csv"
    assert report_main(["toy_study", "--tracking-uri", uri, "--out", str(d / "r2"), "--no-log", "--export", str(path)]) == 0
    assert f"exported {trials * len(ROUNDS)} rows" in capsys.readouterr().out
    rows = _csv(path)
    assert len(rows) == trials * len(ROUNDS) == 36  # 4 cells x (1 tuning + 2 seeds) x 3 rounds
    cols = set(rows[0])
    assert {"study", "launch", "run_id", "trial", "cell", "stage", "status", "seed", "data_name", "data_classes",
            "method", "alpha", "param.optimizer.lr", "param.partition.alpha", "param.seed", "round",
            "mean_client_acc", "worst_client_acc", "gap", "balancedness", "teacher_acc", "client_acc/0"} <= cols
    assert not any(c.startswith("param._") for c in cols)  # the profile's base and the cell bookkeeping
    assert {r["stage"] for r in rows} == {"tune", "seeds"} and {r["launch"] for r in rows} == {parent}
    # raw values, fractions: fedprox at alpha 1, seed 1, round 2
    [r] = [r for r in rows if r["cell"] == "fedprox-a1" and r["stage"] == "seeds" and r["seed"] == "1" and r["round"] == "2"]
    assert float(r["mean_client_acc"]) == pytest.approx(_metrics("fedprox", 1.0, 1, 2, "seeds")["mean_client_acc"])
    assert r["data_name"] == "ag_news" and r["alpha"] == "1.0"

    import pyarrow.parquet as pq

    table = pq.read_table(path.with_suffix(".parquet"))
    assert table.num_rows == 36 and set(table.column_names) == cols
    assert table.schema.field("alpha").type == "double"  # tags read back as numbers where they are numbers

    from sweeps.export import tidy

    frame = tidy("toy_study", tracking_uri=uri)
    assert len(frame) == 36 and frame[0]["alpha"] in ALPHAS


FAIR_CELLS = {"textcnn-a0.1-fedavg": {"model": "textcnn", "aggregation": "fedavg", "alpha": 0.1},
              "fm_lora-a0.1-fedavg": {"model": "fm_lora", "aggregation": "fedavg", "alpha": 0.1}}


@pytest.mark.parametrize("data_name, classes, paper, on_parent", [
    ("ag_news", AG_CLASSES, True, False), ("dbpedia14", "Company,Artist", False, False),
    ("dbpedia14", None, False, True),  # the launch's tag where the trials have none
    (None, None, True, False)])  # runs from before the tags: the paper's column, as before
def test_paper_reference_follows_the_data_name(tmp_path, capsys, data_name, classes, paper, on_parent):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent, _ = _launch(uri, "fairness_paradox", FAIR_CELLS, data_name, classes, on_parent=on_parent)
    assert report_main(["fairness_paradox", "--tracking-uri", uri, "--run-id", parent, "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    [row] = [ln for ln in text.splitlines() if ln.split()[:3] == ["0.1", "textcnn", "fedavg"]]
    header = _csv(tmp_path / "r" / "table.csv")[0]
    assert "balancedness_%" in header and "METHODS.md" not in text
    if paper:
        assert row.endswith("86.6/54.5/32.2") and "paper avg/worst/gap" in text and "paper_avg_%" in header
        assert "No paper reference" not in text
    else:
        assert "86.6" not in text and "paper avg" not in text and "paper_avg_%" not in header
        assert "No paper reference exists for this data (dbpedia14)" in text
    assert ("data " + data_name in text) if data_name else "; data" not in text
    # the generic report of a built-in study
    assert report_main(["fairness_paradox", "--tracking-uri", uri, "--run-id", parent, "--generic", "--no-log",
                        "--out", str(tmp_path / "g")]) == 0
    assert "fairness_paradox (generic report)" in capsys.readouterr().out
    assert (tmp_path / "g" / "metrics_vs_alpha.png").is_file()


def test_paper_references_of_the_other_reports_follow_the_data_name():
    from sweeps.report_lora import lora_fair_rows, lora_fair_table
    from sweeps.report_priors import fed_lpfm_rows, fed_lpfm_table, fedpurel_rows, fedpurel_table

    def rec(agg, data_name, **cell):
        m = {"global_acc": 0.5, "balancedness": 0.2, "mean_client_acc": 0.6, "worst_client_acc": 0.4,
             "domain_acc/real": 0.5, "domain_avg_acc": 0.5}
        return {"aggregation": agg, "alpha": 0.5, "model": "fm_lora", "seed": 0, "run_id": "r", "metrics": m,
                "cell": {"aggregation": agg, **cell}, "data_name": data_name}

    for name, shown in (("domainnet", True), ("nicopp", True), ("ag_news", False)):
        recs = [rec("lora_fair", name, partition="domain", table="1")]
        rows, domains = lora_fair_rows(recs)
        table = lora_fair_table(rows, domains, [name])
        assert (rows[0]["paper"] is not None) == shown and ("No paper reference" in table) != shown
    for name, shown in (("cifar100", True), ("CIFAR-100-LT", True), ("ag_news", False), ("cifar10", False)):
        table = fedpurel_table(fedpurel_rows([rec("fedpurel", name, dataset=name, imbalance="10")]), [name])
        assert ("69.77" in table) == shown and ("No paper reference" in table) != shown
        assert "METHODS.md" not in table and not re.search(r"\bbal\b", table)
    for name, shown in (("cifar10", True), ("ag_news", False)):
        table = fed_lpfm_table(fed_lpfm_rows([rec("fedavg", name, dataset=name, teacher="-")]), [name])
        assert ("were not available" in table) == shown and ("No paper reference" in table) != shown


def test_unknown_study_is_one_line_error(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert report_main(["no_such_study", "--tracking-uri", uri]) == 2
    assert "no experiment 'no_such_study'" in capsys.readouterr().err
