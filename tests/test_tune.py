"""Real Ray Tune runs (local cluster, 2 CPUs) of the fedcore trainables: one Ray session for the
module; the launch's TrimFinished callback (sweeps/trim.py) rides along."""
import math
from pathlib import Path
import sys

import pytest
import ray
from ray import tune

from fedcore.federation import Federation
from fedcore.tune import register_all, run_config_of, run_trial
from sweeps.trim import TrimFinished

BASE = {"data": {"source": "synthetic:topics?n=240&test=60", "max_len": 16, "vocab_size": 300},
        "model": {"name": "textcnn", "embed_dim": 8, "num_filters": 4},
        "partition": {"num_clients": 4, "alpha": 0.5}, "rounds": 3, "batch_size": 16, "seed": 5,
        "clients_per_round": 3,
        # Ray gives each 1-CPU trial one thread; the direct runs below must match it to compare
        # bit for bit (float sums depend on the thread count)
        "torch_threads": 1}
UNTIMED = ("seconds", "train_seconds", "time_", "timestamp", "date", "pid", "hostname", "node_ip",
           "iterations_since_restore", "training_iteration", "trial_id", "node_id", "done", "checkpoint_dir_name",
           "should_checkpoint", "config", "experiment_tag")


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the flaky wrapper below travels by value: workers cannot import this test module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def direct_history(config, method):
    import torch

    threads = torch.get_num_threads()
    try:
        return Federation(run_config_of(config, method)).run()
    finally:
        torch.set_num_threads(threads)


def same_metrics(reported: dict, direct: dict):
    for key, value in direct.items():
        if key in UNTIMED:
            continue
        got = reported[key]
        assert (math.isnan(value) and math.isnan(got)) or got == value, key


class StepWindows(tune.Callback):
    """How many metrics' deques the driver holds for each trial as it completes."""

    def __init__(self):
        self.sizes = []

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.sizes.append(len(trial.run_metadata.metric_n_steps))


def test_trainables_report_every_round_and_divergence_ends_quietly(tmp_path):
    names = register_all()
    assert {"fedavg", "fedprox", "fedavgw", "fedit"} <= set(names)
    tuner = tune.Tuner(
        "fedavg",
        param_space={"_base": BASE, "optimizer.lr": tune.grid_search([0.05, 1e30]), "optimizer.momentum": 0.0},
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="t1", verbose=0,
                                  callbacks=[windows_before := StepWindows(), TrimFinished(), windows_after := StepWindows()]),
    )
    grid = tuner.fit()
    # the driver kept each finished trial's metric deques until TrimFinished dropped them
    assert len(windows_before.sizes) == 2 and min(windows_before.sizes) >= 30
    assert windows_after.sizes == [0, 0]
    assert grid.num_errors == 0  # the diverged trial ended cleanly
    by_lr = {r.config["optimizer.lr"]: r for r in grid}
    good, bad = by_lr[0.05], by_lr[1e30]
    history = good.metrics_dataframe
    assert history["round"].tolist() == [1.0, 2.0, 3.0]
    for key in ("worst_client_acc", "balancedness", "mean_client_acc", "gap", "global_acc"):
        assert history[key].notna().all(), key
    # the trainable computes exactly what the engine computes without Ray
    direct = direct_history({"_base": BASE, "optimizer.lr": 0.05, "optimizer.momentum": 0.0}, "fedavg")
    for reported, expected in zip(history.to_dict("records"), direct):
        same_metrics(reported, expected)
    assert good.checkpoint is not None
    assert bad.metrics["diverged"] == 1.0 and math.isnan(bad.metrics["worst_client_acc"])
    assert "not finite" in bad.metrics["diverged_reason"] or "loss became" in bad.metrics["diverged_reason"]


def flaky(config):
    """fedavg, except that the first attempt dies right after round 2 (before reporting it)."""

    import fedcore.tune as ft

    marker = Path(config["_marker"])
    original = ft.Federation.run_round

    def run_round(self):
        metrics = original(self)
        if self.round == 2 and not marker.exists():
            marker.touch()
            raise RuntimeError("injected failure after round 2")
        return metrics

    ft.Federation.run_round = run_round
    run_trial({k: v for k, v in config.items() if k != "_marker"}, "fedavg")


def test_crashed_trial_restores_from_checkpoint_and_matches(tmp_path):
    marker = tmp_path / "crashed"
    tuner = tune.Tuner(
        flaky,
        param_space={"_base": BASE, "_checkpoint_every": 1, "_marker": str(marker), "optimizer.lr": 0.05},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="t2", verbose=0, callbacks=[TrimFinished()],
                                  failure_config=tune.FailureConfig(max_failures=1)),  # trims nothing of the errored try
    )
    grid = tuner.fit()
    assert marker.exists(), "the failure was injected"
    assert grid.num_errors == 0
    result = grid[0]
    direct = direct_history({"_base": BASE, "optimizer.lr": 0.05}, "fedavg")
    assert result.metrics["round"] == 3.0
    same_metrics(result.metrics, direct[-1])
    rounds = result.metrics_dataframe["round"].tolist()
    assert rounds[-2:] == [2.0, 3.0] and rounds.count(1.0) == 1  # resumed after round 1, not from scratch


def killed(config):
    """fedavg, except that the first attempt's worker process is SIGKILLed as round 3 begins: no
    exception, no cleanup, the process gone (what the OOM killer or a lost node does)."""
    import os
    import signal

    import fedcore.tune as ft

    marker = Path(config["_marker"])
    original = ft.Federation.run_round

    def run_round(self):
        if self.round == 2 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self)

    ft.Federation.run_round = run_round
    run_trial({k: v for k, v in config.items() if k != "_marker"}, "fedavg")


def test_worker_killed_mid_round_resumes_from_its_checkpoint_and_matches(tmp_path):
    marker = tmp_path / "killed"
    tuner = tune.Tuner(
        killed,
        param_space={"_base": BASE, "_checkpoint_every": 1, "_marker": str(marker), "optimizer.lr": 0.05},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="t4", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    grid = tuner.fit()
    assert marker.exists(), "the worker was killed"
    assert grid.num_errors == 0
    result = grid[0]
    assert result.metrics["pid"] != int(marker.read_text())  # round 3 ran in a new worker
    direct = direct_history({"_base": BASE, "optimizer.lr": 0.05}, "fedavg")
    history = result.metrics_dataframe.to_dict("records")
    assert [r["round"] for r in history] == [1.0, 2.0, 3.0]  # resumed after round 2, each round once
    for reported, expected in zip(history, direct):  # exactly the uninterrupted run, round by round
        same_metrics(reported, expected)


def test_one_trainable_for_every_method_and_reused_actors_change_no_result(tmp_path):
    """A launch runs all its trials through trainable_for(None) with reuse_actors: later trials run
    in a process that has trained other models and methods before, and must compute exactly what a
    direct run computes."""
    from fedcore.tune import trainable_for

    base = {**BASE, "executor": "sequential"}  # `auto` times the executors: its choice may differ by run
    tuner = tune.Tuner(
        tune.with_resources(trainable_for(None), {"cpu": 1}),
        param_space={"_base": base, "_cell": "x", "optimizer.lr": 0.05,
                     "model.name": tune.grid_search(["textcnn", "tiny-bert"]),
                     "method.name": tune.grid_search(["fedavg", "fedprox"])},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="t3", verbose=0),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0 and len(grid) == 4
    assert len({r.metrics["pid"] for r in grid}) == 1  # one actor ran all four
    for r in grid:
        config = {k: v for k, v in r.config.items() if k != "_cell"}
        direct = direct_history(config, None)
        assert r.metrics["round"] == 3.0
        same_metrics(r.metrics, direct[-1])
    assert trainable_for(None).__name__ == "fedcore"
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        trainable_for("nope")


def test_a_round_logged_again_after_a_restore_replaces_the_rows_from_there(tmp_path):
    """A driver that restores a trial from a checkpoint older than its last logged round (killed
    before Tune saved the experiment) logs those rounds again: result.json and progress.csv hold
    each round once, the rerun's values, and a line cut short by the kill is dropped."""
    import csv
    import json

    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from sweeps.round_log import RoundCsv, RoundJson

    trial = Trial("fedcore", stub=True, storage=StorageContext(
        storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="t1"))
    trial.init_local_path()  # what Tune does before it starts a trial

    def drive(rounds, value):
        loggers = RoundJson(), RoundCsv()  # a driver's own, as a resumed launch makes them anew
        for r in rounds:
            for log in loggers:
                log.log_trial_result(r, trial, {"round": float(r), "acc": value + r, "trial_id": "t1"})
        for log in loggers:
            log.log_trial_end(trial)

    drive([1, 2, 3, 4], 0.0)
    with open(f"{trial.local_path}/result.json", "a") as f:
        f.write('{"round": 5.0, "ac')  # the killed driver's last write
    drive([3, 4, 5, 6], 100.0)
    drive([6, 7], 200.0)  # restored at its last checkpoint's round: only that one again
    rows = [json.loads(line) for line in open(f"{trial.local_path}/result.json")]
    assert [(r["round"], r["acc"]) for r in rows] == [(1, 1), (2, 2), (3, 103), (4, 104), (5, 105), (6, 206), (7, 207)]
    with open(f"{trial.local_path}/progress.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(float(r["round"]), float(r["acc"])) for r in table] == [(r["round"], r["acc"]) for r in rows]

    # a trial restarted within the driver (its node lost) from its checkpoint at round 8, while the
    # storage's copy of its files, synced with the experiment, still ends at round 2: the driver's own
    # copy is kept, not replaced by the storage's (which would leave rounds 3 to 8 out)
    import shutil

    from ray.train._internal.session import _TrainingResult

    storage_copy = Path(trial.storage.trial_fs_path)
    storage_copy.mkdir(parents=True, exist_ok=True)
    for name in ("result.json", "progress.csv"):  # a sync of the driver's files
        shutil.copy(Path(trial.local_path, name), storage_copy / name)
    (tmp_path / "ckpt").mkdir()
    trial.run_metadata.checkpoint_manager.register_checkpoint(
        _TrainingResult(tune.Checkpoint.from_directory(str(tmp_path / "ckpt")), {"round": 8}))
    loggers = RoundJson(), RoundCsv()
    for log in loggers:
        log.log_trial_result(8, trial, {"round": 8.0, "acc": 208.0})
    (storage_copy / "result.json").write_text("".join(json.dumps({"round": r, "acc": r}) + "\n" for r in (1, 2)))
    for log in loggers:
        log.log_trial_end(trial, failed=True)  # what Tune does when the trial's actor dies
        log.log_trial_start(trial)
        log.log_trial_result(9, trial, {"round": 9.0, "acc": 309.0})
        log.log_trial_end(trial)
    rows = [json.loads(line) for line in open(f"{trial.local_path}/result.json")]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8, 9] and rows[-1]["acc"] == 309

    # rows without a round (a custom trainable) are appended as Tune's loggers do
    other = Trial("x", stub=True, storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp",
                                                         trial_dir_name="t2"))
    other.init_local_path()
    for _ in range(2):
        log = RoundJson()
        log.log_trial_result(1, other, {"loss": 1.0})
        log.log_trial_end(other)
    assert len(open(f"{other.local_path}/result.json").read().splitlines()) == 2
