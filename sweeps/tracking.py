"""MLflow tracking of a launch: one experiment per study, one parent run per launch, one child run
per trial (Ray's MLflowLoggerCallback: params, and every round as a step of every metric) with the
final per-client and per-class tables (CSV) and a per-client plot (PNG) as artifacts."""
from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

ROOT = Path(__file__).resolve().parents[1]
STORE_DIR = ROOT / "mlflow"


# the store's schema messages are noise on a launch's console
for _name in ("mlflow.store.db.utils", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class TrackingError(RuntimeError):
    pass


def default_tracking_uri() -> str:
    return f"sqlite:///{STORE_DIR / 'mlflow.db'}"


def check_tracking_uri(uri: str) -> None:
    """Fail early, with one line, if the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                if r.status != 200:
                    raise TrackingError(f"tracking server {uri} answered {r.status} on /health")
        except OSError as e:
            raise TrackingError(f"tracking server {uri} is not reachable ({e}); start it with "
                                f"`bash mlflow/server.sh` or pass --tracking-uri") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_absolute():
            raise TrackingError(f"--tracking-uri {uri!r}: use an absolute sqlite:/// path (sqlite:////abs/path.db)")
        path.parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in uri:
        raise TrackingError(f"--tracking-uri {uri!r}: MLflow 3 has no plain-directory store here; "
                            f"use sqlite:////absolute/path.db or http://host:port")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def experiment_id(uri: str, study: str) -> str:
    """The study's experiment, created on first use."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study)
    if exp is not None:
        return exp.experiment_id
    # a local store keeps its artifacts beside the database file
    artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri() \
        if uri.startswith("sqlite:///") else None
    return client.create_experiment(study, artifact_location=artifacts)


def start_parent_run(uri: str, study: str, profile: str, argv: list[str], tune_dir: str,
                     storage: str) -> tuple[str, str]:
    """Open the launch's parent run: (experiment id, run id). `tune_dir` (where this launch's Tune
    experiments live) and `storage` are tags, so that --resume finds the launch again."""
    from mlflow.tracking import MlflowClient

    exp_id = experiment_id(uri, study)
    run = MlflowClient(tracking_uri=uri).create_run(exp_id, run_name=f"{study}-{profile}", tags={
        "git_commit": git_commit(), "profile": profile,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "sweeps.launch", *argv]),
        "kind": "launch", "tune_dir": tune_dir, "storage": storage, "argv": json.dumps(argv)})
    return exp_id, run.info.run_id


def find_launch(uri: str, study: str, profile: str, storage: str):
    """The latest launch of `study` with this profile and storage (an mlflow Run), or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'launch'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    for run in runs:  # filtered here: storage paths may hold characters the filter grammar rejects
        if run.data.tags.get("profile") == profile and run.data.tags.get("storage") == storage:
            return run
    return None


def reopen_run(uri: str, run_id: str, argv: list[str]) -> None:
    """Mark a launch's parent run running again and record the resuming command."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    n = int(client.get_run(run_id).data.tags.get("resumed", "0")) + 1
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "resumed", str(n))
    client.set_tag(run_id, f"resume_command_{n}",
                   " ".join(shlex.quote(a) for a in [sys.executable, "-m", "sweeps.launch", *argv]))


def end_run(uri: str, run_id: str, status: str) -> None:
    """status: FINISHED, FAILED or KILLED (interrupted; --resume continues it)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).set_terminated(run_id, status)


def _tables(result: dict[str, Any]) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    clients = sorted(((k.split("/", 1)[1], v) for k, v in result.items() if k.startswith("client_acc/")),
                     key=lambda kv: int(kv[0]))
    classes = sorted(((k.split("/", 1)[1], v) for k, v in result.items() if k.startswith("class_acc/")),
                     key=lambda kv: int(kv[0]))
    return clients, classes


class TrialTracker(MLflowLoggerCallback):
    """Ray's MLflow callback, with each trial run nested under the launch's parent run, tagged with
    its design cell (`cell.*`, from the trial config's `_cell`) and stage, and the final per-client /
    per-class accuracy tables and plot logged as artifacts.

    Resume-safe: a restored trial (same trial name under the same parent and stage) keeps its MLflow
    run instead of opening a second one, and metrics are stepped by `round`, not by Tune's
    training_iteration, so that the steps of a resumed trial continue where they stopped."""

    def __init__(self, tracking_uri: str, experiment_name: str, parent_run_id: str,
                 cells: dict[str, dict[str, Any]] | None = None):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name,
                         tags={"mlflow.parentRunId": parent_run_id}, save_artifact=False)
        self.cells = cells or {}

    @property
    def client(self):
        if getattr(self, "_client", None) is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def __getstate__(self):
        # the tuner pickles its callbacks; a client (a store with a database engine) stays behind
        return {**self.__dict__, "_client": None}

    def trial_tags(self, trial) -> dict[str, str]:
        from sweeps.schedule import CELL, STAGE

        tags = {**self.tags, "trial_name": str(trial)}
        name, stage = trial.config.get(CELL), trial.config.get(STAGE)
        if name is not None:
            tags["stage"] = f"{name}/{stage}"
            tags.update({f"cell.{k}": str(v) for k, v in {**self.cells.get(name, {}), "name": name, "stage": stage}.items()})
        return tags

    def _existing_run(self, trial, stage: str | None) -> str | None:
        client = self.client
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            return None
        for run in client.search_runs([exp.experiment_id], filter_string=f"tags.trial_name = '{trial}'"):
            tags = run.data.tags
            if tags.get("mlflow.parentRunId") == self.tags["mlflow.parentRunId"] and tags.get("stage") == stage:
                return run.info.run_id
        return None

    def log_trial_start(self, trial):
        if trial not in self._trial_runs:
            tags = self.trial_tags(trial)
            run_id = self._existing_run(trial, tags.get("stage"))
            if run_id is not None:
                self.client.update_run(run_id, status="RUNNING")
            else:
                run_id = self.mlflow_util.start_run(tags=tags, run_name=str(trial)).info.run_id
            self._trial_runs[trial] = run_id
        log_params(self.client, self._trial_runs[trial], trial.config)

    def log_trial_result(self, iteration: int, trial, result: dict):
        step = int(result.get("round") or result.get("training_iteration") or iteration)
        log_metrics(self.client, self._trial_runs[trial], result, step)

    def log_trial_end(self, trial, failed: bool = False):
        result = trial.last_result or {}
        run_id = self._trial_runs.get(trial)
        if run_id is not None and result:
            with tempfile.TemporaryDirectory() as d:
                for path in write_artifacts(result, Path(d)):
                    self.client.log_artifact(run_id, str(path))
        super().log_trial_end(trial, failed)


# Ray's MLflow helper writes one metric or param per request: with a round's ~60 metrics that was
# 0.3 s of the driver per round on a sqlite store, more than a smoke round's training. A batch is one
# request (MLflow caps a batch at 1000 metrics and 100 params).
def log_metrics(client, run_id: str, result: dict[str, Any], step: int) -> None:
    """Every number in `result` (nested dicts flattened with "/"; the trial's config, logged as params,
    left out) as one metric step."""
    from mlflow.entities import Metric

    from ray.tune.utils import flatten_dict

    now = int(time.time() * 1000)
    # numbers only: strings (a divergence's reason, a trial id) are not metrics, even where float() reads them
    metrics = [Metric(k, float(v), now, step) for k, v in flatten_dict({k: v for k, v in result.items() if k != "config"}).items()
               if isinstance(v, numbers.Number)]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def log_params(client, run_id: str, config: dict[str, Any]) -> None:
    """A trial's config (nested dicts flattened with "/") as params."""
    from mlflow.entities import Param
    from ray.tune.utils import flatten_dict

    params = [Param(k, str(v)) for k, v in flatten_dict(config).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])


def write_artifacts(result: dict[str, Any], directory: Path) -> list[Path]:
    clients, classes = _tables(result)
    out = []
    for name, rows, label in (("per_client_accuracy.csv", clients, "client"), ("per_class_accuracy.csv", classes, "class")):
        path = directory / name
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([label, "accuracy"])
            w.writerows(rows)
        out.append(path)
    if clients:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(clients)), 3))
        vals = [0.0 if math.isnan(v) else v for _, v in clients]
        ax.bar([c for c, _ in clients], vals, color="tab:blue")
        ax.axhline(result.get("mean_client_acc", math.nan), color="k", ls="--", lw=1, label="mean")
        ax.set_xlabel("client")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(f"per-client accuracy, round {int(result.get('round', 0))}")
        ax.legend(loc="lower right")
        fig.tight_layout()
        path = directory / "per_client_accuracy.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)
    return out
