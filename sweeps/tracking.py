"""MLflow tracking of a launch: one experiment per study, one parent run per launch, one child run
per trial (Ray's MLflowLoggerCallback: params, and every round as a step of every metric) with the
final per-client and per-class tables (CSV) and a per-client plot (PNG) as artifacts."""
from __future__ import annotations

import csv
import math
import shlex
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

ROOT = Path(__file__).resolve().parents[1]
STORE_DIR = ROOT / "mlflow"


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


def start_parent_run(uri: str, study: str, profile: str, argv: list[str]) -> tuple[str, str]:
    """Create (or find) the study's experiment and open the launch's parent run: (experiment id, run id)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        # a local store keeps its artifacts beside the database file
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri() \
            if uri.startswith("sqlite:///") else None
        exp_id = client.create_experiment(study, artifact_location=artifacts)
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, run_name=f"{study}-{profile}", tags={
        "git_commit": git_commit(), "profile": profile,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "sweeps.launch", *argv]),
        "kind": "launch"})
    return exp_id, run.info.run_id


def end_run(uri: str, run_id: str, ok: bool) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).set_terminated(run_id, "FINISHED" if ok else "FAILED")


def _tables(result: dict[str, Any]) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    clients = sorted(((k.split("/", 1)[1], v) for k, v in result.items() if k.startswith("client_acc/")),
                     key=lambda kv: int(kv[0]))
    classes = sorted(((k.split("/", 1)[1], v) for k, v in result.items() if k.startswith("class_acc/")),
                     key=lambda kv: int(kv[0]))
    return clients, classes


class TrialTracker(MLflowLoggerCallback):
    """Ray's MLflow callback, with each trial run nested under the launch's parent run and the
    final per-client / per-class accuracy tables and plot logged as artifacts."""

    def __init__(self, tracking_uri: str, experiment_name: str, parent_run_id: str, stage: str):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name,
                         tags={"mlflow.parentRunId": parent_run_id, "stage": stage}, save_artifact=False)

    def log_trial_end(self, trial, failed: bool = False):
        result = trial.last_result or {}
        run_id = self._trial_runs.get(trial)
        if run_id is not None and result:
            with tempfile.TemporaryDirectory() as d:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=self.tracking_uri)
                for path in write_artifacts(result, Path(d)):
                    client.log_artifact(run_id, str(path))
        super().log_trial_end(trial, failed)


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
