"""A launch as one tidy table: one row per trial and round, for pandas, R or a spreadsheet.

    python -m sweeps.report STUDY --export launch.csv      # launch.csv, and launch.parquet where pyarrow is installed

    import pandas as pd
    from sweeps.export import tidy
    df = pd.DataFrame(tidy("fairness_paradox"))            # the latest finished launch in the default store

Columns, in this order: study, launch (the parent run's id), run_id, trial (Tune's trial name), cell
(the cell's name), stage (tune or seeds), status (MLflow's: FINISHED, FAILED, ...), seed, data_name and
data_classes (empty for runs from before those tags); the cell's design factors, one column each (from
the trial's cell.* tags; cell.<factor> where a factor's name is taken); the trial's params as
param.<key>, those that differ between the launch's trials (its tuned values, the fields its cells
set, its seed; a field every trial shares is in MLflow, not repeated on every row); round; then
every metric the trial logged at that round (metric.<key> where a metric's name is taken), empty
where it logged none.

Every trial of the launch is there, tuning trials pruned early included (fewer rounds), and diverged
seed runs (metric `diverged` 1). Metric values are the raw logged values: accuracies, gaps and
balancedness as fractions in [0, 1], where the report's tables give percent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeps.report_common import as_number, child_runs, factors, find_parent, record, write_csv

FIXED = ("study", "launch", "run_id", "trial", "cell", "stage", "status", "seed", "data_name", "data_classes")


def tidy_rows(client, parent, study: str) -> list[dict[str, Any]]:
    """The rows of a launch's tidy table (every row holds every column; None where a value is missing)."""
    rows: list[dict[str, Any]] = []
    cols: dict[str, dict[str, None]] = {"factor": {}, "param": {}, "metric": {}}  # ordered sets of names
    for run in child_runs(client, parent):
        r = record(run, parent)
        seed = as_number(r["params"].get("seed"))
        base = {"study": study, "launch": parent.info.run_id, "run_id": r["run_id"], "trial": r["trial"],
                "cell": r["cell_name"], "stage": r["stage"], "status": r["status"],
                "seed": None if seed is None else int(seed), "data_name": r["data_name"], "data_classes": r["data_classes"]}
        for k, v in factors(r).items():
            name = f"cell.{k}" if k in FIXED else k
            base[name] = v
            cols["factor"][name] = None
        for k, v in r["params"].items():
            if not k.startswith("_"):  # _base/... (the profile, every trial alike), _cell, _stage
                base[f"param.{k}"] = v
                cols["param"][f"param.{k}"] = None
        taken = set(FIXED) | set(cols["factor"]) | {"round"}
        steps: dict[int, dict[str, float]] = {}
        for key in r["metrics"]:
            if key == "round":  # the step itself
                continue
            name = f"metric.{key}" if key in taken else key
            cols["metric"][name] = None
            for m in client.get_metric_history(r["run_id"], key):
                steps.setdefault(m.step, {})[name] = m.value
        rows += [{**base, "round": step, **values} for step, values in sorted(steps.items())]
    # a param every trial shares says nothing about a row (the launch logs the whole config)
    varying = [c for c in cols["param"] if len({repr(r.get(c)) for r in rows}) > 1]
    columns = [*FIXED, *sorted(cols["factor"]), *sorted(varying), "round", *sorted(cols["metric"])]
    return _typed([{c: r.get(c) for c in columns} for r in rows], columns)


def _typed(rows: list[dict[str, Any]], columns: list[str]) -> list[dict[str, Any]]:
    """A text column (tags and params are strings in MLflow) whose values all read as numbers becomes
    numbers, so that a column has one type (Parquet needs it)."""
    for c in columns:
        values = [r[c] for r in rows if r[c] is not None]
        if c not in FIXED and values and all(isinstance(v, str) and as_number(v) is not None for v in values):
            for r in rows:
                r[c] = None if r[c] is None else float(r[c])
    return rows


def tidy(study: str, tracking_uri: str | None = None, run_id: str | None = None,
         profile: str | None = None) -> list[dict[str, Any]]:
    """The tidy rows of a launch of `study` (the latest finished one, of `profile` if given, or `run_id`)
    in the tracking store at `tracking_uri` (default: the repository's sqlite store); pd.DataFrame(rows)
    makes a data frame of them."""
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import check_tracking_uri, default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    check_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    return tidy_rows(client, find_parent(client, study, run_id, profile), study)


def write_tidy(rows: list[dict[str, Any]], path: Path) -> tuple[list[Path], str | None]:
    """`path` with .csv, and with .parquet where pyarrow is importable: (files written, a note where
    the Parquet file was skipped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.with_suffix(".csv")
    columns = list(rows[0]) if rows else list(FIXED)
    write_csv(out, columns, ([r[c] for c in columns] for r in rows))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return [out], "pyarrow is not installed: no Parquet file (pip install pyarrow adds it)"
    pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in columns}), path.with_suffix(".parquet"))
    return [out, path.with_suffix(".parquet")], None
