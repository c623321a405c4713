"""Memory: W1's peak resident memory against the number of clients (it should grow with nothing but
their data), and resident memory over 100 sequential trials in one driver (it should not creep).

Each measurement runs in a fresh subprocess: `python -m benchmarks.memory clients N` runs two W1
rounds with N clients and prints the process's peak RSS; `python -m benchmarks.memory trials N` runs
N small TextCNN federations one after another and prints RSS after the 10th and the last;
`python -m benchmarks.memory driver N` runs N trials through Tune and the MLflow tracker, as a launch
does, and prints the driver's RSS after the 10th and the last (`driver-untrimmed N`: the same without
sweeps.trim.TrimFinished, to see what it saves).
"""
from __future__ import annotations

import gc
import resource
import subprocess
import sys

import psutil

from benchmarks.common import ROOT, Row


def _clients(n: int) -> None:
    import torch

    from benchmarks.w1 import make_federation

    torch.set_num_threads(2)
    fed = make_federation(2, clients=n)
    fed.run()
    print(peak_rss_mb())


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM, which starts afresh at exec; getrusage's ru_maxrss would carry
    the high-water mark of the parent that forked it)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _trials(n: int) -> None:
    import torch

    from fedcore.resolve import make_config
    from fedcore.federation import Federation

    torch.set_num_threads(2)
    cfg = make_config({"data": {"source": "synthetic:topics?n=600&test=100", "max_len": 16},
                       "partition": {"num_clients": 10}, "clients_per_round": 5, "model": {"embed_dim": 32},
                       "rounds": 2, "max_local_steps": 2, "seed": 0})
    marks = []
    for i in range(1, n + 1):
        Federation(cfg.model_copy(update={"seed": i})).run()
        gc.collect()
        if i in (10, n):
            marks.append(psutil.Process().memory_info().rss / 2**20)
    print(*marks)


def _driver(n: int, trim: bool = True) -> None:
    """n small trials through Tune in this driver, as a launch runs them (one trainable for every trial,
    actors reused, the MLflow tracker on a sqlite store, sweeps.trim's TrimFinished unless `trim` is
    False); the driver's RSS after the 10th and the last trial ends: what a long launch would creep by."""
    import tempfile

    import ray
    from ray import tune

    from fedcore.tune import trainable_for
    from sweeps.tracking import TrialTracker, start_parent_run
    from sweeps.trim import TrimFinished

    class Rss(tune.Callback):
        def __init__(self):
            self.ended, self.marks = 0, []

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ended += 1
            if self.ended in (10, n):
                gc.collect()
                self.marks.append(psutil.Process().memory_info().rss / 2**20)

    base = {"data": {"source": "synthetic:topics?n=300&test=60", "max_len": 16}, "partition": {"num_clients": 4},
            "model": {"embed_dim": 16}, "rounds": 2, "max_local_steps": 2, "torch_threads": 1}
    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{d}/mlflow.db"
        _, parent = start_parent_run(uri, "mem", "bench", ["mem"], d, d)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        rss = Rss()
        tune.Tuner(tune.with_resources(trainable_for("fedavg"), {"cpu": 1}),
                   param_space={"_base": base, "_cell": "c", "_stage": "tune", "seed": tune.grid_search(list(range(n)))},
                   tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
                   run_config=tune.RunConfig(storage_path=d, name="trials", verbose=0,
                                             callbacks=[*([TrimFinished()] if trim else []), rss, TrialTracker(uri, "mem", parent, outbox_dir=d)])).fit()
        ray.shutdown()
    print(*rss.marks)


def _sub(*args: str) -> list[float]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip()[-500:])
    return [float(v) for v in out.stdout.split()]


def run(quick: bool, log=print) -> tuple[list[Row], dict[str, float]]:
    small, large = 100, 400
    log(f"MEM: peak RSS of two W1 rounds with {small} and {large} clients (fresh processes)")
    [rss_small], [rss_large] = _sub("clients", str(small)), _sub("clients", str(large))
    trials = 30 if quick else 100
    log(f"MEM: RSS over {trials} sequential trials in one process")
    after10, after_all = _sub("trials", str(trials))
    log(f"MEM: the Tune driver's RSS over {trials} trials after the 10th (MLflow tracker on), and without TrimFinished")
    driver10, driver_all = _sub("driver", str(trials + 10))
    untrimmed10, untrimmed_all = _sub("driver-untrimmed", str(trials + 10))
    rows = [Row("MEM", f"W1 engine, {small} clients", [], None, rss_small),
            Row("MEM", f"W1 engine, {large} clients", [], None, rss_large, "same data, 4x the clients"),
            Row("MEM", f"{trials} trials in one process", [], None, after_all,
                f"RSS {after10:.0f} MB after trial 10, {after_all:.0f} MB after trial {trials}"),
            Row("MEM", f"{trials} trials, Tune driver", [], None, driver_all,
                f"driver RSS {driver10:.0f} MB after trial 10, {driver_all:.0f} MB after trial {trials + 10}"),
            Row("MEM", f"{trials} trials, Tune driver, untrimmed", [], None, untrimmed_all,
                f"without TrimFinished: {untrimmed10:.0f} MB after trial 10, {untrimmed_all:.0f} MB after trial {trials + 10}")]
    return rows, {"MEM clients x4": rss_large / rss_small, f"MEM {trials} trials": after_all / after10,
                  f"MEM driver {trials} trials": driver_all / driver10,
                  f"MEM driver {trials} trials untrimmed": untrimmed_all / untrimmed10}


if __name__ == "__main__":
    kind, n = sys.argv[1], int(sys.argv[2])
    {"clients": _clients, "trials": _trials, "driver": _driver,
     "driver-untrimmed": lambda k: _driver(k, trim=False)}[kind](n)
