import math
import re
import subprocess
import sys

import pytest

from sweeps.launch import main
from tests.conftest import study_plan


def test_design_cells_and_controls():
    cells = study_plan("fairness_paradox", "paper")
    assert len(cells) == 4 + 4 * 2  # textcnn x alpha (fedavg only) + fm_lora x alpha x {fedavg, fedavgw}
    assert all(c["aggregation"] == "fedavg" for _, c, _, _ in cells if c["model"] != "fm_lora")
    # local, sized for 2 cores: the two ends of alpha, FedAvg only, every arm with its own lr range
    local = {n: space for n, _, space, _ in study_plan("fairness_paradox", "local", controls=True)}
    assert sorted(local) == sorted(f"{m}-a{a}-fedavg" for m in ("textcnn", "fm_lora", "fm_full", "fm_scratch")
                                   for a in ("0.1", "5"))
    assert all(list(space) == ["optimizer.lr"] for space in local.values())
    assert local["fm_lora-a0.1-fedavg"]["optimizer.lr"].low == 0.001
    with_controls = {n: (c, space, cfg) for n, c, space, cfg in study_plan("fairness_paradox", "paper", controls=True)}
    assert len(with_controls) == 20
    cfg = with_controls["fm_scratch-a0.1-fedavg"][2]
    assert (cfg.model.name, cfg.model.tuning, cfg.model.init) == ("distilbert-base-uncased", "full", "random")
    cfg = with_controls["fm_full-a5-fedavg"][2]
    assert (cfg.model.tuning, cfg.model.init) == ("full", "pretrained")
    assert "method.params.beta" in with_controls["fm_lora-a0.1-fedavgw"][1]
    assert "method.params.beta" not in with_controls["fm_lora-a0.1-fedavg"][1]


def test_list_and_dry_run(capsys):
    assert main(["--list"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == "fairness_paradox"
    assert main(["fairness_paradox", "--dry-run", "--controls", "--num-samples", "3", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "10 design cells x (3 tuning + 2 seed trials) = 50 trials" in out
    assert "fm_scratch-a0.1-fedavg" in out and "fm_lora-a1-fedavgw" in out


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown study 'nope'; allowed: fairness_paradox"),
    (["fairness_paradox", "--profile", "huge"], "unknown profile 'huge' for fairness_paradox; allowed: smoke, local, paper"),
    (["fairness_paradox", "--data-dir", "/no/such/dir"], "--data-dir '/no/such/dir' lacks train.csv, test.csv"),
    (["fairness_paradox", "--num-samples", "0"], "--num-samples must be at least 1"),
    (["fairness_paradox", "--cells", "resnet"], "--cells 'resnet' matches no cell"),
    (["fairness_paradox", "--cpus-per-trial", "0"], "--cpus-per-trial 0: allowed a number > 0"),
    (["fairness_paradox", "--tracking-uri", "http://127.0.0.1:9"], "tracking server http://127.0.0.1:9 is not reachable"),
    (["fairness_paradox", "--tracking-uri", "sqlite:///relative.db"], "use an absolute sqlite:/// path"),
])
def test_bad_inputs_start_nothing(args, message, capsys):
    import ray

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"] or (len(err) == 1 and message in err[0])
    assert not ray.is_initialized()


@pytest.mark.slow
def test_real_launch_of_one_cell(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "sweeps.launch", "fairness_paradox", "--cells", "textcnn-a0.1",
         "--num-samples", "2", "--seeds", "2", "--storage", str(tmp_path),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("textcnn-a0.1-fedavg ")]
    assert len(rows) == 1 and rows[0].split()[1] == "2"  # two seeds in the final table
    assert out.stdout.count("[textcnn-a0.1-fedavg tune] trial") == 2
    assert out.stdout.count("[textcnn-a0.1-fedavg seeds] trial") == 2
    # progress: each trial line says how many of the 4 planned have ended, and the last has nothing left
    ended = re.findall(r"; (\d)/4 trials ended, [\d.]+ min in(, about \d+ min left)?$", out.stdout, re.M)
    assert [int(k) for k, _ in ended] == [1, 2, 3, 4] and ended[0][1] and not ended[-1][1]
    [launch_dir] = tmp_path.glob("fairness_paradox-smoke-*")
    assert (launch_dir / "trials").is_dir()  # one Tune experiment for the launch
    # a finished trial keeps its last checkpoint only (sweeps/prune.py): its last round's
    for trial in (launch_dir / "trials").glob("textcnn-*"):
        reports = len((trial / "result.json").read_text().splitlines())
        assert [c.name for c in trial.glob("checkpoint_*")] == [f"checkpoint_{reports - 1:06d}"], trial.name

    # MLflow: one parent run for the launch, one child per trial (2 tuning + 2 seeds), every round
    # a step of the objectives, and the tables and plot as artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fairness_paradox")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "launch"]
    assert len(parents) == 1 and parents[0].data.tags["profile"] == "smoke"
    assert parents[0].data.tags["tune_dir"] == str(launch_dir) and parents[0].info.status == "FINISHED"
    assert "sweeps.launch fairness_paradox" in parents[0].data.tags["command"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 4
    for child in children:
        for key in ("worst_client_acc", "balancedness"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps[-1] == child.data.metrics["round"] and steps == list(range(1, len(steps) + 1))
        assert child.data.params["partition.alpha"] == "0.1"
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert names == {"per_client_accuracy.csv", "per_class_accuracy.csv", "per_client_accuracy.png"}
    assert (tmp_path / "artifacts").is_dir()

    # the report reads the same runs back: its row is the mean of the two seed runs' final metrics
    report = subprocess.run(
        [sys.executable, "-m", "sweeps.report", "fairness_paradox", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--out", str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    seeds = [c for c in children if c.data.tags["cell.stage"] == "seeds"]
    assert len(seeds) == 2
    worst = sum(c.data.metrics["worst_client_acc"] for c in seeds) / 2
    row = [line for line in report.stdout.splitlines() if line.split()[:3] == ["0.1", "textcnn", "fedavg"]]
    assert len(row) == 1 and row[0].split()[3] == "2"
    means = re.findall(r"(-?\d+\.\d) ±", row[0])  # mean acc, worst acc, gap, balancedness
    assert float(means[1]) == pytest.approx(100 * worst, abs=0.051)  # worst acc, mean over seeds
    # the paper's numbers sit beside ours only on the paper's data (AG News), not the synthetic corpus
    assert "86.6/54.5/32.2" not in report.stdout and "No paper reference exists for this data" in report.stdout
    plots = {"gap_vs_alpha.png", "per_client_alpha0.1.png", "worst_client_over_rounds.png"}
    files = {"table.csv", "table.txt", "launch.txt", *plots, *(p.replace(".png", ".svg") for p in plots)}
    assert {f.name for f in (tmp_path / "report").iterdir()} == files  # no contrasts.csv: one cell, no pair
    assert all((tmp_path / "report" / f).stat().st_size > 1000 for f in files if f.endswith(".png"))
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert logged == {f"report/{f}" for f in files}


def _mlflow_runs(db):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("fairness_paradox").experiment_id])
    return client, [r for r in runs if r.data.tags.get("kind") == "launch"], \
        [r for r in runs if r.data.tags.get("kind") != "launch"]


@pytest.mark.slow
def test_interrupted_launch_resumes_without_repeating_trials(tmp_path):
    """Ctrl-C after the first finished trial, then --resume: the rest runs, nothing twice, one
    MLflow run per trial, and every trial's rounds stepped once."""
    import signal
    import time

    db = tmp_path / "mlflow.db"
    args = [sys.executable, "-m", "sweeps.launch", "fairness_paradox", "--cells", "textcnn-a0.1",
            "--num-samples", "3", "--seeds", "2", "--max-concurrent", "1", "--storage", str(tmp_path / "runs"),
            "--tracking-uri", f"sqlite:///{db}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # interrupt as soon as one trial has finished
        first.append(line)
        if "tune] trial" in line and ": done" in line:
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(first)
    out, err = proc.communicate(timeout=300)
    first.append(out)
    assert proc.returncode == 130, err[-3000:]
    assert "continue with: python -m sweeps.launch fairness_paradox" in err and "--resume" in err
    client, parents, children = _mlflow_runs(db)
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    done_before = {line.split("trial ")[1].split(":")[0] for line in "".join(first).splitlines()
                   if "] trial" in line and ": done" in line}
    assert done_before

    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming launch" in resumed.stdout
    rows = [line for line in resumed.stdout.splitlines() if line.startswith("textcnn-a0.1-fedavg ")]
    assert len(rows) == 1 and rows[0].split()[1] == "2"
    done_after = {line.split("trial ")[1].split(":")[0] for line in resumed.stdout.splitlines() if "] trial" in line}
    assert not done_before & done_after  # finished trials were not run again

    client, parents, children = _mlflow_runs(db)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and parents[0].data.tags["resumed"] == "1"
    names = [c.data.tags["trial_name"] for c in children]
    assert len(children) == 3 + 2 and len(set(names)) == len(names)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["cell.model"] == "textcnn" and child.data.tags["cell.alpha"] == "0.1"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "worst_client_acc")]
        assert steps == list(range(1, int(child.data.metrics["round"]) + 1))


def test_progress_line_estimates_from_this_drivers_rate():
    from sweeps.launch import progress_line

    assert progress_line(3, 12, 600.0, 3) == "3/12 trials ended, 10.0 min in, about 30 min left"
    # resumed with 5 ended before: 2 ended in this driver's 4 minutes, 5 to go at 2 min each
    assert progress_line(7, 12, 240.0, 2) == "7/12 trials ended, 4.0 min in, about 10 min left"
    assert progress_line(12, 12, 600.0, 12) == "12/12 trials ended, 10.0 min in"


def test_report_summary_and_priors_verdict():
    from sweeps.contrasts import contrast_rows, plan
    from sweeps.report import PAPER, format_table, priors_verdict, summarize
    from sweeps.studies import get_study

    def rec(model, alpha, seed, mean, worst):
        cell = {"model": model, "alpha": str(alpha), "aggregation": "fedavg", "name": f"{model}-a{alpha:g}-fedavg"}
        return {"model": model, "aggregation": "fedavg", "alpha": alpha, "seed": seed, "cell": cell,
                "cell_name": cell["name"], "params": {"partition.alpha": str(alpha)},
                "metrics": {"mean_client_acc": mean, "worst_client_acc": worst, "gap": mean - worst,
                            "balancedness": worst}}

    gaps = {"fm_full": (0.40, 0.42, 0.41), "fm_scratch": (0.10, 0.13, 0.11), "fm_lora": (0.45, 0.40, 0.50),
            "textcnn": (0.09, 0.12, 0.12)}
    records = [rec(m, 0.1, s, 0.8, 0.8 - g) for m, gs in gaps.items() for s, g in zip((1, 2, 3), gs)]
    records.append(rec("textcnn", 1.0, 1, 0.9, 0.9))
    rows = summarize(records)
    assert [(r["alpha"], r["model"]) for r in rows] == [(0.1, "textcnn"), (0.1, "fm_lora"), (0.1, "fm_full"),
                                                        (0.1, "fm_scratch"), (1.0, "textcnn")]
    lora = rows[1]
    assert lora["seeds"] == 3 and lora["gap"] == pytest.approx((0.45, 0.05))
    assert lora["gap"].n == 3 and lora["gap"].hi - lora["gap"].lo == pytest.approx(2 * 4.302653 * 0.05 / 3 ** 0.5)
    assert lora["paper"] == PAPER[("fm_lora", "fedavg", 0.1)] == (80.8, 30.7, 50.1)
    assert math.isnan(rows[4]["gap"][1]) and rows[4]["paper"] == (94.9, 89.3, 5.6)  # one seed: no sd
    assert " 45.0 ±  5.0 [ 32.6,  57.4]" in format_table(rows)
    study = get_study("fairness_paradox", "smoke", True)
    cells = [(f"{m}-a0.1-fedavg", {"model": m, "alpha": 0.1, "aggregation": "fedavg"}) for m in gaps]
    cells.append(("textcnn-a1-fedavg", {"model": "textcnn", "alpha": 1.0, "aggregation": "fedavg"}))
    contrasts = contrast_rows(records, plan(study.profiles["smoke"].options["contrasts"], cells))
    verdict = priors_verdict(contrasts)
    assert verdict.startswith("Does the gap at alpha 0.1 follow pretraining, or architecture, capacity or adaptation?")
    lines = verdict.splitlines()
    assert "fm_full - fm_scratch" in lines[1] and "+29.7" in lines[1] and lines[1].endswith("resolved")
    assert "fm_lora - fm_full" in lines[2] and "not resolved at 3 seeds" in lines[2]
    assert "fm_scratch - textcnn" in lines[3] and "not resolved at 3 seeds" in lines[3]
    assert lines[4] == "  Answer: resolved for pretraining (widens it); the others are not resolved at these seeds."
    plain = get_study("fairness_paradox", "smoke").profiles["smoke"].options["contrasts"]
    assert priors_verdict(contrast_rows(records, plan(plain, cells))) is None  # no control contrasts, no answer


def test_report_adds_the_zero_shot_row_once_per_seed():
    from sweeps.report import summarize
    from sweeps.report_lora import rank_collapse_rows

    def rec(model, seed, teacher_mean, teacher_worst):
        return {"model": model, "aggregation": "fedavg", "alpha": 0.1, "seed": seed, "cell": {"rank_profile": "uniform"},
                "metrics": {"mean_client_acc": 0.8, "worst_client_acc": 0.5, "gap": 0.3, "balancedness": 0.4,
                            "teacher_mean_client_acc": teacher_mean, "teacher_worst_client_acc": teacher_worst,
                            "teacher_acc": 0.6, "teacher_balancedness": 0.2}}

    # the same seed gives the same partition in every cell: its zero-shot values count once
    records = [rec("textcnn", 0, 0.7, 0.4), rec("fm_lora", 0, 0.7, 0.4), rec("fm_lora", 1, 0.6, 0.2)]
    zero = [r for r in summarize(records) if r["model"] == "zero_shot"]
    assert len(zero) == 1 and zero[0]["seeds"] == 2 and zero[0]["aggregation"] == "-"
    assert zero[0]["mean_client_acc"][0] == pytest.approx(0.65) and zero[0]["gap"][0] == pytest.approx(0.35)
    assert zero[0]["gap"][1] == pytest.approx(0.0707107, abs=1e-6) and zero[0]["balancedness"][0] == pytest.approx(0.2)
    rows = rank_collapse_rows([dict(r, aggregation="raflora") for r in records])
    assert [r["method"] for r in rows] == ["zero_shot", "raflora"]
    assert rows[0]["worst_client_acc"][0] == pytest.approx(0.3) and math.isnan(rows[0]["energy_outside_shared"][0])


def test_trial_results_go_to_mlflow_in_batches_numbers_only(tmp_path):
    import numpy as np
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import log_metrics, log_params

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = client.create_run(client.create_experiment("x")).info.run_id
    result = {"worst_client_acc": 0.25, "gap": np.float32(0.5), "diverged": False, "balancedness": float("nan"),
              "trial_id": "00001e10", "diverged_reason": "loss became nan", "config": {"optimizer.lr": 0.1},
              **{f"client_acc/{k}": k / 1000 for k in range(1200)}}  # more than one batch of 1000
    log_metrics(client, run, result, step=3)
    metrics = client.get_run(run).data.metrics
    assert metrics["worst_client_acc"] == 0.25 and metrics["gap"] == 0.5 and metrics["diverged"] == 0.0
    assert math.isnan(metrics["balancedness"]) and metrics["client_acc/1199"] == 1.199
    assert "trial_id" not in metrics and "diverged_reason" not in metrics  # "00001e10" reads as a float, but is an id
    assert not any(k.startswith("config") for k in metrics)
    assert [m.step for m in client.get_metric_history(run, "gap")] == [3]
    log_params(client, run, {"_base": {"data": {"max_len": 16}}, "optimizer.lr": 0.1,
                             **{f"p{i}": i for i in range(150)}})  # more than one batch of 100
    params = client.get_run(run).data.params
    assert params["_base/data/max_len"] == "16" and params["optimizer.lr"] == "0.1" and params["p149"] == "149"
