"""MLflow tracking of a launch: one experiment per study, one parent run per launch, one child run
per trial (Ray's MLflowLoggerCallback: params, and every round as a step of every metric) with the
final per-client and per-class tables (CSV) and a per-client plot (PNG) as artifacts.

What a user sees: a child run is named by its cell, stage and number (`fm_lora-a0.1-fedavg / tune 3`,
`fm_lora-a0.1-fedavg / seed 1`) and holds the config the trial ran with, once per field (the validated
RunConfig by dotted name); the parent run's description holds the launch's result table and its
metrics one summary per cell (`<cell>/worst_client_acc`, summarize_launch)."""
from __future__ import annotations

import json
import logging
import math
import numbers
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from ray.air.integrations.mlflow import MLflowLoggerCallback

from fedcore.metrics import MEAN_CLIENT_ACC, SUMMARY_KEYS
from sweeps.report_common import write_csv

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
        if path.is_dir():
            raise TrackingError(f"--tracking-uri {uri!r}: {path} is a folder; give the database file, e.g. "
                                f"sqlite:///{path / 'mlflow.db'}")
        from fedcore.paths import writable_dir

        try:
            writable_dir(path.parent, "--tracking-uri's folder")
        except ValueError as e:
            raise TrackingError(str(e)) from None
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


def machine_description() -> str:
    """The driver machine in one line (the launch's `machine` tag): CPUs, memory, GPUs, OS, Python."""
    import os
    import platform

    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        mem = ""
    try:
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no CUDA runtime: no GPU to name
        gpus = []
    return (f"{os.cpu_count()} CPUs{mem}, {', '.join(gpus) or 'no GPU'}, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}")


def start_parent_run(uri: str, study: str, profile: str, argv: list[str], tune_dir: str,
                     storage: str, tags: dict[str, str] | None = None) -> tuple[str, str]:
    """Open the launch's parent run: (experiment id, run id). `tune_dir` (where this launch's Tune
    experiments live) and `storage` are tags, so that --resume finds the launch again. `tags`: more
    tags of the launch (e.g. data_name, data_classes); they cannot replace the ones above."""
    from mlflow.tracking import MlflowClient

    exp_id = experiment_id(uri, study)
    run = MlflowClient(tracking_uri=uri).create_run(exp_id, run_name=f"{study}-{profile}", tags={
        **{k: str(v) for k, v in (tags or {}).items()}, "git_commit": git_commit(), "profile": profile,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "sweeps.launch", *argv]),
        "kind": "launch", "tune_dir": tune_dir, "storage": storage, "argv": json.dumps(argv),
        "machine": machine_description()})
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


def mark_abandoned(uri: str, study: str, may_be_running: Callable[[Any], bool]) -> list[str]:
    """Launches of `study` still RUNNING in MLflow whose driver is gone (`may_be_running(run)` False:
    killed with SIGKILL, or its machine lost) marked KILLED, with their RUNNING trial runs; their ids.
    --resume continues such a launch as any interrupted one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return []
    marked = []
    for run in client.search_runs([exp.experiment_id], filter_string="tags.kind = 'launch' and attributes.status = 'RUNNING'",
                                  max_results=1000):
        if may_be_running(run):
            continue
        children = client.search_runs([exp.experiment_id], max_results=10000, filter_string=
                                      f"tags.mlflow.parentRunId = '{run.info.run_id}' and attributes.status = 'RUNNING'")
        for child in children:
            client.set_terminated(child.info.run_id, "KILLED")
        client.set_terminated(run.info.run_id, "KILLED")
        client.set_tag(run.info.run_id, "abandoned", "its driver ended without closing it (e.g. SIGKILL)")
        marked.append(run.info.run_id)
    return marked


def drop_phantom_runs(uri: str, study: str, parent: str, trial_ids: set[str]) -> list[str]:
    """A driver killed just after Tune opened a trial, before Tune saved that it had, leaves a run for a
    trial the resumed experiment never knew (the searcher proposes it again, as a new trial with its
    own run). Such unfinished runs of this launch are deleted (MLflow keeps them, deleted, with the
    reason), so that each trial has one run; their ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return []
    dropped = []
    for run in client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                  max_results=10000):
        trial_id = run.data.tags.get("trial_name", "").rsplit("_", 1)[-1]
        if trial_id not in trial_ids and run.info.status != "FINISHED":
            client.set_tag(run.info.run_id, "dropped", "its trial was lost with a killed driver and proposed again")
            client.set_terminated(run.info.run_id, "KILLED")
            client.delete_run(run.info.run_id)
            dropped.append(run.info.run_id)
    return dropped


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
    """Ray's MLflow callback, with each trial run nested under the launch's parent run, named by its
    cell, stage and number (`<cell> / tune 3`, `<cell> / seed 1`), tagged with its design cell
    (`cell.*`, from the trial config's `_cell`), stage and the cell's `cell_tags`, holding the config
    the trial ran with as params (trial_params), and the final per-client / per-class accuracy
    tables and plot as artifacts.

    Resume-safe: a restored trial (same trial name under the same parent and stage) keeps its MLflow
    run, and so its name, instead of opening a second one, and metrics are stepped by `round`, not by
    Tune's training_iteration, so that the steps of a resumed trial continue where they stopped."""

    def __init__(self, tracking_uri: str, experiment_name: str, parent_run_id: str,
                 cells: dict[str, dict[str, Any]] | None = None,
                 cell_tags: dict[str, dict[str, str]] | None = None, outbox_dir: str | None = None):
        from sweeps.outbox import Outbox

        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name,
                         tags={"mlflow.parentRunId": parent_run_id}, save_artifact=False)
        self.cells = cells or {}
        self.cell_tags = cell_tags or {}
        # every write goes through the outbox: kept on disk while the store is down (sweeps/outbox.py)
        self.outbox = Outbox(tracking_uri, outbox_dir)
        self._run_ids: dict[str, str] = {}  # trial name -> its run
        self._last_step: dict[str, int] = {}  # run -> the last round it holds
        self._stages: dict[str | None, dict[str, Any]] = {}  # stage -> what the store holds of it (_stage)

    @property
    def client(self):
        if getattr(self, "_client", None) is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def __getstate__(self):
        # the tuner pickles its callbacks; a client (a store with a database engine) stays behind
        return {**self.__dict__, "_client": None, "_stages": {}}

    def __setstate__(self, state):
        # a tracker pickled by a launch from before the stage index (resumed with --resume) has none
        self.__dict__.update({"_stages": {}, **state})

    def setup(self, *args, **kwargs):
        # Ray's setup asks the store for the experiment; a store that is down now is the outbox's
        # business (the launch checked it before it began), not a reason to stop
        from sweeps.outbox import is_outage

        try:
            super().setup(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if not is_outage(e):
                raise
            self._trial_runs = {}

    def trial_tags(self, trial) -> dict[str, str]:
        from sweeps.schedule import CELL, STAGE

        name, stage = trial.config.get(CELL), trial.config.get(STAGE)
        # the cell's own tags first: they describe it (its data), they cannot replace the ones below
        tags = {**{k: str(v) for k, v in self.cell_tags.get(name, {}).items()}, **self.tags, "trial_name": str(trial)}
        if name is not None:
            tags["stage"] = f"{name}/{stage}"
            tags.update({f"cell.{k}": str(v) for k, v in {**self.cells.get(name, {}), "name": name, "stage": stage}.items()})
        return tags

    def _stage_runs(self, stage: str | None) -> list:
        """The runs of this launch in `stage` (every run of the launch without one), deleted ones
        included: their numbers stay taken."""
        from mlflow.entities import ViewType

        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            return []
        parent = self.tags["mlflow.parentRunId"]
        filt = f"tags.mlflow.parentRunId = '{parent}'"
        if stage is not None and _SAFE_VALUE.match(stage):
            filt += f" and tags.stage = '{stage}'"
        runs, token = [], None
        while True:
            page = self.client.search_runs([exp.experiment_id], filter_string=filt, run_view_type=ViewType.ALL,
                                           max_results=1000, page_token=token)
            runs += [r for r in page if r.data.tags.get("stage") == stage]
            token = page.token
            if not token:
                return runs

    def _stage(self, stage: str | None) -> dict[str, Any]:
        """The stage's runs as the store held them when this driver first asked, kept up to date here
        since (a launch has one driver: it holds the lock): "taken", how many numbers are taken
        (deleted runs keep theirs), and "active", trial name -> the run of each active one. Searching
        the store at every trial start instead costs time and memory that grow with the launch."""
        if stage not in self._stages:
            active: dict[str, str] = {}
            runs = self._stage_runs(stage)
            for run in runs:  # the trial_name tag finds a resumed trial's run
                if run.info.lifecycle_stage == "active":
                    active.setdefault(run.data.tags.get("trial_name"), run.info.run_id)
            self._stages[stage] = {"taken": len(runs), "active": active}
        return self._stages[stage]

    def _run_of(self, op: dict[str, Any]) -> str | None:
        """The run of the op's trial: this driver's, else the one an earlier driver opened."""
        name = op["trial"]
        if name not in self._run_ids:
            run_id = self._stage(op.get("stage"))["active"].get(name)
            if run_id is not None:
                self._run_ids[name] = run_id
        return self._run_ids.get(name)

    def apply(self, op: dict[str, Any]) -> None:
        """One write to the store (sweeps/outbox.py sends it now, or later)."""
        kind = op["op"]
        if kind == "start":
            run_id = self._run_of(op)
            if run_id is not None:  # a resumed trial, or the same trial retried after a failure
                self.client.update_run(run_id, status="RUNNING")
                logged = self.client.get_run(run_id).data.params
            else:
                exp = self.client.get_experiment_by_name(self.experiment_name)
                exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment_name)
                stage = self._stage(op.get("stage"))
                name = child_run_name(op["name"], stage["taken"] + 1) or op["trial"]
                try:
                    run_id = self.client.create_run(exp_id, tags=op["tags"], run_name=name).info.run_id
                except BaseException:
                    # the store may have made the run and lost only its answer: when this write is
                    # sent again, the stage is read afresh and that run found by its trial_name tag
                    self._stages.pop(op.get("stage"), None)
                    raise
                stage["taken"] += 1
                stage["active"][op["trial"]] = self._run_ids[op["trial"]] = run_id
                logged = {}
            log_params(self.client, run_id, op["params"], logged)
            # a trial restored from its checkpoint reports again the rounds it ran after that checkpoint
            # (killed driver or worker): those rounds are in the run already, once is enough
            rounds = self.client.get_metric_history(run_id, "round")
            self._last_step[run_id] = max((m.step for m in rounds), default=0)
            return
        run_id = self._run_of(op)
        if run_id is None:
            print(f"warning: no MLflow run for trial {op['trial']}; its {kind} record is dropped", file=sys.stderr)
            return
        if kind == "metrics":
            if op["step"] <= self._last_step.get(run_id, 0):
                return
            log_numbers(self.client, run_id, op["metrics"], op["step"])
            self._last_step[run_id] = op["step"]
        elif kind == "artifacts":
            for path in op["files"]:
                self.client.log_artifact(run_id, path)
        elif kind == "end":
            self.client.set_terminated(run_id, op["status"])

    def _send(self, op: dict[str, Any]) -> None:
        self.outbox.send(op, self.apply)

    def log_trial_start(self, trial):
        from sweeps.schedule import CELL, STAGE

        tags = self.trial_tags(trial)
        self._send({"op": "start", "trial": str(trial), "stage": tags.get("stage"), "tags": tags,
                    "name": {k: trial.config[k] for k in (CELL, STAGE, "seed") if k in trial.config},
                    "params": trial_params(trial.config)})

    def log_trial_result(self, iteration: int, trial, result: dict):
        step = int(result.get("round") or result.get("training_iteration") or iteration)
        self._send({"op": "metrics", "trial": str(trial), "stage": self.trial_tags(trial).get("stage"), "step": step,
                    "metrics": numbers_of(result)})

    def log_trial_end(self, trial, failed: bool = False):
        result, stage = trial.last_result or {}, self.trial_tags(trial).get("stage")
        if result:
            with tempfile.TemporaryDirectory() as d:
                files = [str(p) for p in write_artifacts(result, Path(d))]
                self._send({"op": "artifacts", "trial": str(trial), "stage": stage, "files": files})
        self._send({"op": "end", "trial": str(trial), "stage": stage, "status": "FAILED" if failed else "FINISHED"})


# a value that can stand in a search filter's quotes as it is (cell names, stages)
_SAFE_VALUE = re.compile(r"^[\w.\-/ ]*$")


def child_run_name(config: dict[str, Any], number: int) -> str | None:
    """A trial run's name: `<cell> / tune <number>` for the cell's number-th tuning trial, `<cell> /
    seed <seed>` for a seed run (its seed is its RunConfig seed), None outside a sweep (no cell)."""
    from sweeps.schedule import CELL, STAGE

    cell, stage = config.get(CELL), config.get(STAGE)
    if cell is None:
        return None
    if stage == "seeds":
        return f"{cell} / seed {config.get('seed', number - 1)}"
    return f"{cell} / {stage or 'trial'} {number}"


def trial_params(config: dict[str, Any]) -> dict[str, str]:
    """The config a trial ran with, as MLflow params: every field of its validated RunConfig (the
    profile's base, the cell's overrides, the tuned values and the seed, composed by
    fedcore.tune.run_config_of as the trainable composes them) by its dotted name, once. The sweep's
    own keys (`_base`, `_cell`, `_stage`, ...) are no params: the cell and stage are tags."""
    from fedcore.config import ConfigError, set_dotted
    from fedcore.tune import run_config_of

    try:
        cfg = run_config_of(config)
    except ConfigError:
        # the driver validates on the CPU, as the launch's plan does: a trial's GPU may be on a
        # cluster's worker only; the device is then the one the trial asked for
        base = config.get("_base", {})
        device = config.get("device", base.get("device", "cpu"))
        try:
            cfg = run_config_of({**config, "device": "cpu"}).model_copy(update={"device": device})
        except ConfigError:
            # invalid anyway (the trial fails with the reason): what it was given, merged
            merged = json.loads(json.dumps(base, default=str))
            for k, v in config.items():
                if not k.startswith("_"):
                    set_dotted(merged, k, v)
            return {k: _param_value(v) for k, v in _flatten(merged).items()}
    return {k: _param_value(v) for k, v in _flatten(cfg.model_dump(mode="json")).items()}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, dict):  # an empty section (a method without params) has no value
            out[f"{prefix}{k}"] = v
    return out


def _param_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, tuple)) else str(v)


# Ray's MLflow helper writes one metric or param per request: with a round's ~60 metrics that was
# 0.3 s of the driver per round on a sqlite store, more than a smoke round's training. A batch is one
# request (MLflow caps a batch at 1000 metrics and 100 params).
def numbers_of(result: dict[str, Any]) -> dict[str, float]:
    """Every number in `result` (nested dicts flattened with "/"; the trial's config, logged as params,
    left out)."""
    from ray.tune.utils import flatten_dict

    # numbers only: strings (a divergence's reason, a trial id) are not metrics, even where float() reads them
    return {k: float(v) for k, v in flatten_dict({k: v for k, v in result.items() if k != "config"}).items()
            if isinstance(v, numbers.Number)}


def log_numbers(client, run_id: str, values: dict[str, float], step: int) -> None:
    """`values` as one metric step, in batches."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for k, v in values.items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def log_metrics(client, run_id: str, result: dict[str, Any], step: int) -> None:
    """Every number in `result` as one metric step."""
    log_numbers(client, run_id, numbers_of(result), step)


def log_params(client, run_id: str, config: dict[str, Any], logged: dict[str, str] | None = None) -> None:
    """`config` (nested dicts flattened with "/") as params, in batches. Params are immutable:
    `logged` (what the run holds already, e.g. a resumed trial's run) are not sent again, and one
    that holds another value is kept, with a warning, rather than failing the launch."""
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
    from ray.tune.utils import flatten_dict

    logged = logged or {}
    # cut here, not by the store: the same cut on every resume logs the same value again
    values = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in flatten_dict(config).items()}
    changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
    if changed:
        logging.getLogger(__name__).warning("run %s keeps its earlier value of params %s (params are immutable)",
                                            run_id, ", ".join(changed))
    params = [Param(k, v) for k, v in values.items() if k not in logged]
    for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])




def summary_metric_name(cell: str, key: str) -> str:
    """`<cell>/<key>`, valid as an MLflow metric name for any cell name: MLflow takes letters, digits
    and `_ - . / space` and refuses a name that a path would read otherwise (`./x`, `../x`, `/x`)."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    name = re.sub(r"[^\w.\- ]", "_", cell) or "_"
    if name.startswith("."):
        name = "_" + name
    return f"{name[:MAX_ENTITY_KEY_LENGTH - len(key) - 1]}/{key}"


def split_tag(name: str, value: str, limit: int | None = None) -> dict[str, str]:
    """A value longer than MLflow's tag limit as tags name, name.1, name.2, ... (`joined_tag` reads it)."""
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    limit = limit or MAX_TAG_VAL_LENGTH
    parts = [value[i:i + limit] for i in range(0, len(value), limit)] or [""]
    return {(name if i == 0 else f"{name}.{i}"): part for i, part in enumerate(parts)}


def joined_tag(tags: dict[str, str], name: str) -> str | None:
    """The value split_tag wrote (None where the tag is absent)."""
    if name not in tags:
        return None
    parts, i = [tags[name]], 1
    while f"{name}.{i}" in tags:
        parts.append(tags[f"{name}.{i}"])
        i += 1
    return "".join(parts)


def note_text(study: str, tags: dict[str, str], table_text: str, rows: list[dict[str, Any]],
              data: str | None = None, limit: int | None = None) -> str:
    """The parent run's description (Markdown): the study, profile, data and command, the result
    table in a code block, and where the per-cell metrics are; at most `limit` characters (MLflow's
    tag value limit), the table cut where it must be."""
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    limit = limit or MAX_TAG_VAL_LENGTH
    if data is None:  # the data tags start_parent_run was given: data_name, and data_classes, ... beside it
        more = "; ".join(f"{k.removeprefix('data_')} {v}" for k, v in sorted(tags.items())
                         if k.startswith("data_") and k != "data_name")
        name = tags.get("data_name")
        data = f"{name} ({more})" if name and more else name or more or "not recorded"
    failed = [r["cell"] for r in rows if "error" in r]
    head = [f"**{study}**, profile `{tags.get('profile', '?')}`: {len(rows)} cell{'s' * (len(rows) != 1)}"
            + (f", {len(failed)} without a result ({', '.join(failed)})" if failed else ""),
            "",
            f"- data: {data}",
            f"- command: `{tags.get('command', '?')}`"]
    if tags.get("resumed"):
        head.append(f"- resumed: {tags['resumed']} (the commands: tags resume_command_1, ...)")
    if tags.get("git_commit"):
        head.append(f"- commit: `{tags['git_commit']}`")
    tail = ["", "Metrics of this run, one per cell: `<cell>/mean_client_acc`, `<cell>/worst_client_acc`, "
            "`<cell>/gap`, `<cell>/balancedness`, `<cell>/global_acc` (means over seeds) and `<cell>/seeds`. "
            "A cell's trials are the child runs with `tags.stage = '<cell>/seeds'` (or `/tune`)."]
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", table_text)), default=0))
    lines = table_text.strip("\n").splitlines()

    def text(kept: list[str], cut: int) -> str:
        more = [f"... {cut} more lines: python -m sweeps.report {study}"] if cut else []
        return "\n".join([*head, "", fence + "text", *kept, *more, fence, *tail])

    for n in range(len(lines), -1, -1):  # the whole table if it fits, else as many lines as do
        out = text(lines[:n], len(lines) - n)
        if len(out) <= limit:
            return out
    return out[:limit]


def summarize_launch(uri: str, run_id: str, rows: list[dict[str, Any]], table_text: str,
                     data: str | None = None, keys: tuple[str, ...] = SUMMARY_KEYS, seeds: bool = True) -> None:
    """Once a launch's result table exists: the parent run's description (the `mlflow.note.content`
    tag, Markdown) holds the table (`table_text`, as the console prints it) with the study, profile,
    data and command, and the parent run gets one metric per cell and summary key
    (summary_metric_name: `<cell>/worst_client_acc`, ..., means over seeds, and `<cell>/seeds`, 0 for
    a cell without a result; `keys` and `seeds` choose which). `data` overrides the data line
    (default: the parent's data_* tags).
    Run again (a resumed launch), it replaces the description and logs the metrics again."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    study = client.get_experiment(run.info.experiment_id).name
    now = int(time.time() * 1000)
    metrics = []
    for row in rows:
        values = {k: row.get(k) for k in keys}
        if seeds:
            values["seeds"] = 0 if "error" in row else row.get("seeds", 0)
        # numbers only, and no NaN: a chart of the cells skips a cell without a value, not draws a hole
        metrics += [Metric(summary_metric_name(row["cell"], k), float(v), now, 0) for k, v in values.items()
                    if isinstance(v, numbers.Number) and not isinstance(v, bool) and math.isfinite(v)]
    client.set_tag(run_id, MLFLOW_RUN_NOTE, note_text(study, run.data.tags, table_text, rows, data))
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])


def write_artifacts(result: dict[str, Any], directory: Path) -> list[Path]:
    clients, classes = _tables(result)
    out = []
    for name, rows, label in (("per_client_accuracy.csv", clients, "client"), ("per_class_accuracy.csv", classes, "class")):
        path = directory / name
        write_csv(path, [label, "accuracy"], rows)
        out.append(path)
    if clients:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(clients)), 3))
        vals = [0.0 if math.isnan(v) else v for _, v in clients]
        ax.bar([c for c, _ in clients], vals, color="tab:blue")
        ax.axhline(result.get(MEAN_CLIENT_ACC, math.nan), color="k", ls="--", lw=1, label="mean")
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
