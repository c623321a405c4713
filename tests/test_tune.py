"""Real Ray Tune runs (local cluster, 2 CPUs) of the fedcore trainables: one Ray session for the
module; the launch's TrimFinished callback (sweeps/trim.py) rides along."""
import math
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
    from pathlib import Path

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
    from pathlib import Path

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
