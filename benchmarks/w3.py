"""W3: the fairness_paradox smoke study end to end, for the sweep's overhead: everything a trial costs
but local training and evaluation (actor start, config and data set-up, model build, per-round
report, checkpoints, MLflow logging).

The launch runs as a user runs it (a subprocess, a local Ray, its own MLflow store); then, per trial,
its MLflow run's wall time (opened when the trial starts, closed after its artifacts) is set against
the sum of its rounds' `seconds` (training and evaluation). The overhead is reported per trial
(median) and over the whole launch (all trials' overhead seconds over all their wall seconds: the
first trial on each of the launch's reused actors pays its imports). With --quick only two cells
(TextCNN and MiniLM + LoRA at alpha 0.1, one tuning and one seed trial each).
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, PeakRSS, Row


def run(quick: bool, log=print) -> tuple[list[Row], dict[str, float]]:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        cmd = [sys.executable, "-m", "sweeps.launch", "fairness_paradox", "--storage", str(Path(tmp) / "runs"),
               "--tracking-uri", uri]
        if quick:
            cmd += ["--cells", "^(textcnn|fm_lora)-a0.1-fedavg$", "--num-samples", "1", "--seeds", "1"]
        log(f"W3: {' '.join(cmd[1:4])}{' (2 cells)' if quick else ''}")
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        launch_s = time.perf_counter() - t0
        if proc.returncode != 0:
            return [Row("W3", "fairness_paradox smoke", note="failed: " + proc.stderr.strip()[-300:])], {}
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("fairness_paradox")
        walls, works, overheads, inside = [], [], [], []
        for r in client.search_runs([exp.experiment_id]):
            if r.info.end_time is None or "cell.stage" not in r.data.tags:  # the trials' runs, not the launch's
                continue
            wall = (r.info.end_time - r.info.start_time) / 1000
            work = sum(m.value for m in client.get_metric_history(r.info.run_id, "seconds"))
            walls.append(wall)
            works.append(work)
            overheads.append(1 - work / wall)
            if "time_total_s" in r.data.metrics:
                inside.append(1 - work / r.data.metrics["time_total_s"])
    if not walls:
        return [Row("W3", "fairness_paradox smoke", note="no finished trial runs in MLflow")], {}
    total = 1 - sum(works) / sum(walls)
    note = (f"{len(walls)} trials, launch {launch_s:.0f} s; overhead median {statistics.median(overheads):.0%} of a "
            f"trial's wall time, {total:.0%} over all trials"
            + (f", median {statistics.median(inside):.0%} of a trial's time inside the trainable" if inside else ""))
    ratios = {"W3 overhead": statistics.median(overheads), "W3 overhead_all_trials": total}
    if inside:
        ratios["W3 overhead_in_trainable"] = statistics.median(inside)
    return [Row("W3", "fairness_paradox smoke (s/trial)", walls, None, rss.mb, note)], ratios
