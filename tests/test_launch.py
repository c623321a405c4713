import subprocess
import sys

import pytest

from fedcore.config import make_config
from search_spaces import fairness_paradox as fp
from sweeps.launch import main


def test_design_cells_and_controls():
    cells = fp.cells()
    assert len(cells) == 4 + 4 * 2  # textcnn x alpha (fedavg only) + fm_lora x alpha x {fedavg, fedavgw}
    assert all(c["aggregation"] == "fedavg" for c in cells if c["model"] != "fm_lora")
    with_controls = fp.cells(controls=True)
    assert len(with_controls) == 20
    o = fp.cell_overrides({"model": "fm_scratch", "alpha": 0.1, "aggregation": "fedavg"}, "minilm-l6")
    cfg = make_config({}, **o)
    assert (cfg.model.name, cfg.model.tuning, cfg.model.init) == ("minilm-l6", "full", "random")
    o = fp.cell_overrides({"model": "fm_full", "alpha": 5.0, "aggregation": "fedavg"}, "minilm-l6")
    assert (make_config({}, **o).model.tuning, make_config({}, **o).model.init) == ("full", "pretrained")
    assert "method.params.beta" in fp.nuisance_space({"model": "fm_lora", "alpha": 0.1, "aggregation": "fedavgw"})
    assert "method.params.beta" not in fp.nuisance_space({"model": "fm_lora", "alpha": 0.1, "aggregation": "fedavg"})


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
    (["fairness_paradox", "--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
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
    assert (tmp_path / "fairness_paradox-textcnn-a0.1-fedavg-tune").is_dir()
    assert (tmp_path / "fairness_paradox-textcnn-a0.1-fedavg-seeds").is_dir()

    # MLflow: one parent run for the launch, one child per trial (2 tuning + 2 seeds), every round
    # a step of the objectives, and the tables and plot as artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fairness_paradox")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "launch"]
    assert len(parents) == 1 and parents[0].data.tags["profile"] == "smoke"
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
