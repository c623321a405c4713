"""The report toolkit: what every study's report is made of, once, and the generic report any study
gets from it (a user's own study included).

Reading a launch back from MLflow (`find_parent`, `seed_records`), mean ± sd [95% interval] over seeds
with n (`mean_sd`, `pm`; the formulas are sweeps/stats.py's), the foundation model's zero-shot rows (`zero_shot_records`), the data's names and
whether a paper's reference numbers apply to it (`data_names`, `is_paper_data`), CSV files
(`write_csv`), metric curves over rounds with a band of the 95% interval over seeds (`plot_curves`) and a metric
against a numeric factor (`plot_lines`).

Units: the records hold the raw logged values (fractions in [0, 1]); every table this toolkit prints or
writes (table.txt, table.csv) gives accuracies, gaps and balancedness in percent, the CSV's headers
ending in `_%`.

The generic report (`generic_report`): one row per design cell (its factors from the child runs'
`cell.*` tags), mean ± sd [95% interval] and n over the cell's seed runs of the final-round metrics, the zero-shot
rows where the trials scored one, curves over rounds per cell, and the metrics against each numeric
factor, one line per combination of the other factors.
"""
from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from fedcore.metrics import GAP, LABELS, MEAN_CLIENT_ACC, SUMMARY_KEYS, WORST_CLIENT_ACC

KEYS = SUMMARY_KEYS
METHODS_DOC = "docs/methods.md"
# the data each paper's reference numbers were measured on, as a pattern of the data_name tag
PAPER_DATA = {"fairness_paradox": r"ag_news", "lora_fair": r"domainnet|nico", "fedpurel": r"cifar[-_ ]?100",
              "fed_lpfm": r"cifar[-_ ]?10(?!0)"}


class ReportError(RuntimeError):
    pass


def methods_ref(section: str) -> str:
    return f'{METHODS_DOC}, section "{section}"'


# --- reading a launch ------------------------------------------------------------------------------
def find_parent(client, study: str, run_id: str | None = None, profile: str | None = None):
    """The launch's parent run: `run_id`, else the latest finished launch (of `profile`)."""
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise ReportError(f"no experiment {study!r} in this tracking store; run python -m sweeps.launch {study} first")
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception:
            raise ReportError(f"--run-id {run_id!r}: no such run") from None
        if run.data.tags.get("kind") != "launch" or run.info.experiment_id != exp.experiment_id:
            raise ReportError(f"--run-id {run_id!r} is not a launch of {study}")
        return run
    for run in client.search_runs([exp.experiment_id], filter_string="tags.kind = 'launch'",
                                  order_by=["attributes.start_time DESC"]):
        if run.info.status == "FINISHED" and (profile is None or run.data.tags.get("profile") == profile):
            return run
    raise ReportError(f"no finished launch of {study}" + (f" with profile {profile}" if profile else "")
                      + "; an interrupted one continues with python -m sweeps.launch ... --resume")


def child_runs(client, parent) -> list:
    """Every trial run of the launch (tuning and seeds), oldest first."""
    runs, token = [], None
    while True:  # paged: a paper launch has more trials than one page
        page = client.search_runs([parent.info.experiment_id], max_results=1000, page_token=token,
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
        runs += list(page)
        token = page.token
        if not token:
            return runs


def as_number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def record(run, parent=None) -> dict[str, Any]:
    """A trial run as the reports read it: its cell (the `cell.*` tags, name and stage included), seed,
    final metrics, params and data names (the run's data_name/data_classes tags, else its launch's).
    model/aggregation/alpha are the built-in studies' factors ("" and NaN where a study has none)."""
    tags = {**{k: v for k, v in (parent.data.tags if parent else {}).items()
               if k in ("data_name", "data_classes", "data_synthetic", "profile")}, **run.data.tags}
    cell = {k[5:]: v for k, v in tags.items() if k.startswith("cell.")}
    alpha = as_number(cell.get("alpha"))
    return {"model": cell.get("model", ""), "aggregation": cell.get("aggregation", ""),
            "alpha": math.nan if alpha is None else alpha, "cell_name": cell.get("name", ""),
            "stage": cell.get("stage", ""), "seed": int(as_number(run.data.params.get("seed")) or 0),
            "run_id": run.info.run_id, "status": run.info.status, "trial": tags.get("trial_name", ""),
            "metrics": run.data.metrics, "params": run.data.params, "cell": cell,
            "data_name": tags.get("data_name"), "data_classes": tags.get("data_classes"),
            "profile": tags.get("profile"), "synthetic": tags.get("data_synthetic") == "true"}


def seed_records(client, parent) -> list[dict[str, Any]]:
    """The seeded re-runs of the launch that finished without diverging: one record per trial."""
    out = [record(r, parent) for r in child_runs(client, parent)
           if r.data.tags.get("cell.stage") == "seeds" and r.info.status == "FINISHED" and not r.data.metrics.get("diverged")]
    if not out:
        raise ReportError(f"launch {parent.info.run_id} has no finished seed runs")
    return out


def factors(rec: dict[str, Any]) -> dict[str, str]:
    """A record's design factors: its cell tags but the cell's name and stage."""
    return {k: v for k, v in rec.get("cell", {}).items() if k not in ("name", "stage")}


# --- statistics ------------------------------------------------------------------------------------
class Stat(tuple):
    """(mean, sd) over seeds, NaNs left out, with `n` the number of values averaged and `lo`, `hi` the
    95% Student-t interval of the mean (sweeps/stats.py; NaN, as the sd, for fewer than 2 values); it
    unpacks and compares as the pair."""

    def __new__(cls, mean: float, sd: float, n: int, lo: float = math.nan, hi: float = math.nan):
        self = super().__new__(cls, (mean, sd))
        self.n, self.lo, self.hi = n, lo, hi
        return self


def mean_sd(values: Iterable[float]) -> Stat:
    """Mean, sample sd and 95% t interval of the non-NaN values (sd and interval NaN for one value)."""
    from sweeps.stats import t_interval

    # float error (a gap of -1e-17) is no spread and no sign
    iv = t_interval([round(v, 12) + 0.0 for v in values if v is not None and v == v])
    return Stat(iv.mean, iv.sd, iv.n, iv.lo, iv.hi)


def stat(records: list[dict[str, Any]], key: str) -> Stat:
    return mean_sd(r["metrics"].get(key, math.nan) for r in records)


PM_WIDTH = 27  # what pm() of a Stat takes: 'mean ± sd [lo, hi]'
INTERVAL_NOTE = "mean ± sd [95% Student-t interval of the mean, shown clipped to 0-100] over n seed runs"


def pm(pair: tuple[float, float], scale: float = 100.0) -> str:
    """'mean ± sd [lo, hi]' (PM_WIDTH characters) of a Stat, 'mean ± sd' (12) of a plain pair; in percent
    by default; dashes where there is no value (no sd and no interval from one seed)."""
    m, sd = pair
    ci = isinstance(pair, Stat)
    if math.isnan(m):
        return f"{'-':>5}{'':{PM_WIDTH - 5 if ci else 7}}"
    head = f"{scale * m:5.1f} ± " + ("   -" if sd != sd else f"{scale * sd:4.1f}")
    if not ci:
        return head
    if pair.lo != pair.lo:
        return head + f" {'[-]':<14}"
    # the metrics are fractions: an interval from few seeds can reach past them, shown clipped
    lo, hi = max(0.0, scale * pair.lo), min(scale, scale * pair.hi)
    return head + f" [{lo:5.1f}, {hi:5.1f}]"


def half_width(s: Stat, scale: float = 100.0) -> float:
    """The 95% interval's half-width (NaN for one seed): a plot's error bar."""
    return scale * (s.hi - s.lo) / 2 if isinstance(s, Stat) and s.lo == s.lo else math.nan


def pm_head(label: str) -> str:
    return f"{label:>{PM_WIDTH}}"


def pct_header(key: str) -> list[str]:
    return [f"{key}_%", f"{key}_sd_%", f"{key}_ci_lo_%", f"{key}_ci_hi_%"]


def pct(pair: tuple[float, float]) -> list[float]:
    lo, hi = (pair.lo, pair.hi) if isinstance(pair, Stat) else (math.nan, math.nan)
    return [100 * v if v == v else "" for v in (pair[0], pair[1], lo, hi)]


# --- zero-shot rows --------------------------------------------------------------------------------
def zero_shot_metrics(metrics: dict[str, float]) -> dict[str, float] | None:
    """A trial's teacher_* metrics (the foundation model's zero-shot head, untrained, on the same clients
    and test set) under the model metrics' names, teacher_acc as global_acc, with the gap; None where the
    trial scored no zero-shot head."""
    out = {("global_acc" if k == "teacher_acc" else k[len("teacher_"):]): v
           for k, v in metrics.items() if k.startswith("teacher_")}
    if not any(v == v for v in out.values()):
        return None
    if MEAN_CLIENT_ACC in out and WORST_CLIENT_ACC in out:
        out[GAP] = out[MEAN_CLIENT_ACC] - out[WORST_CLIENT_ACC]
    return out


def zero_shot_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The zero-shot row's records: one per seed (a seed fixes the partition, so the zero-shot head
    scores the same clients in every cell of it), aggregation `zero_shot`."""
    by_seed: dict[int, dict] = {}
    for r in records:
        m = zero_shot_metrics(r["metrics"])
        if m is not None:
            by_seed.setdefault(r["seed"], {**r, "aggregation": "zero_shot", "metrics": m})
    return list(by_seed.values())


# --- the data --------------------------------------------------------------------------------------
def data_names(records: list[dict[str, Any]]) -> list[str]:
    """The datasets the records' data_name tags name (empty for runs from before the tag); a launch's
    tag lists its datasets comma-separated."""
    return sorted({n.strip() for r in records if r.get("data_name") for n in r["data_name"].split(",") if n.strip()})


def bare_number_classes(records: list[dict[str, Any]]) -> bool:
    """Whether the runs' classes are only ids (no class_names given), as the launch tagged them."""
    classes = {c for r in records if r.get("data_classes") for c in r["data_classes"].split(",")}
    return bool(classes) and all(re.fullmatch(r"-?\d+", c) for c in classes)


def describe_data(records: list[dict[str, Any]]) -> str:
    """'ag_news (World, Sports, Business, Sci/Tech; 4 classes)'; '' for untagged runs."""
    names = data_names(records)
    if len(names) != 1:
        return ", ".join(names)
    classes = next((r["data_classes"] for r in records if r.get("data_classes")), None)
    if not classes:
        return names[0]
    shown = classes.split(",")
    return f"{names[0]} ({', '.join(shown[:6])}{', ...' if len(shown) > 6 else ''}; {len(shown)} classes)"


def is_paper_data(names: Iterable[str], study: str) -> bool | None:
    """Whether every named dataset is the one `study`'s paper reports on; None where nothing is named
    (untagged runs: the report keeps its old behaviour and shows the reference)."""
    names = list(names)
    if not names:
        return None
    return all(re.search(PAPER_DATA[study], n, re.IGNORECASE) for n in names)


def no_reference(names: Iterable[str], paper: str, data: str) -> str:
    return f"No paper reference exists for this data ({', '.join(names)}): {paper} reports {data} only."


def data_note(names: Iterable[str]) -> str:
    names = list(names)
    return f" Data: {', '.join(names)}." if names else ""


def titled(title: str, records: list[dict[str, Any]]) -> str:
    """A plot's title: what it shows, the data, the profile, and whether the data is synthetic."""
    names = data_names(records)
    profiles = sorted({r["profile"] for r in records if r.get("profile")})
    what = [f"profile {', '.join(profiles)}"] if profiles else []
    if any(r.get("synthetic") for r in records):
        what.append("synthetic data")
    return (f"{title}, {', '.join(names)}" if names else title) + (f" ({'; '.join(what)})" if what else "")


# --- files -----------------------------------------------------------------------------------------
def write_csv(path: Path, header: list[str], rows: Iterable[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def save_figure(fig, path: Path) -> None:
    """The PNG at `path` and an SVG beside it (for papers: vector, and editable)."""
    fig.savefig(path, dpi=110)
    fig.savefig(path.with_suffix(".svg"))


def plot_curves(client, groups: dict[tuple, list[dict]], key: str, path: Path, *, title: str, ylabel: str,
                panels: list | None = None, series: list | None = None, label: Callable[[Any], str] = str,
                color: Callable[[Any], str] | None = None, panel_title: Callable[[Any], str] = str,
                baselines: dict[Any, float] | None = None, scale: float = 100.0) -> None:
    """`groups` maps (panel, series) to seed records: one panel per panel key, one line per series, the
    mean over seeds of metric `key` at every round that all seeds logged, a band of its 95% Student-t
    interval over the n seeds (named in the legend); `baselines` adds a dashed line per panel (a
    zero-shot value)."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator
    from scipy import stats as st

    panels = panels if panels is not None else list(dict.fromkeys(p for p, _ in groups))
    series = series if series is not None else list(dict.fromkeys(s for _, s in groups))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 3.6 * len(panels)), 3.8), sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, s in enumerate(series):
            curves = [c for c in (history(client, r["run_id"], key) for r in groups.get((panel, s), [])) if c]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            vals = scale * np.array([[c[t] for t in steps] for c in curves], dtype=float)
            kept = ~np.isnan(vals).all(axis=0)  # rounds no run evaluated (eval.every > 1): no point
            steps, vals = [t for t, k in zip(steps, kept) if k], vals[:, kept]
            if not steps:
                continue
            mean = np.nanmean(vals, axis=0)
            col = color(s) if color else f"C{i % 10}"
            n = len(curves)
            ax.plot(steps, mean, marker=".", label=f"{label(s)} (n={n})", color=col)
            if n > 1:
                half = st.t.ppf(0.975, n - 1) * np.nanstd(vals, axis=0, ddof=1) / np.sqrt(n)
                ax.fill_between(steps, mean - half, mean + half, color=col, alpha=0.2, linewidth=0)
        if baselines and baselines.get(panel) == baselines.get(panel):  # not NaN
            ax.axhline(scale * baselines[panel], color="gray", linestyle="--", label="zero-shot")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel_title(panel), fontsize=9)
        ax.set_xlabel("round")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.005, "line: mean over n seed runs; band: its 95% Student-t interval", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save_figure(fig, path)
    plt.close(fig)


@dataclass
class Line:
    label: str
    x: list[float]
    y: list[float]  # means, already scaled
    err: list[float]  # error bars: the 95% interval's half-widths (half_width), already scaled
    color: str | None = None
    style: str = "-"
    n: list[int] | None = None  # seeds behind each point, for the legend


def plot_lines(panels: list[list[Line]], path: Path, *, xlabel: str, ylabels: list[str], titles: list[str] = (),
               suptitle: str | None = None, logx: bool = False, xticklabels: list[str] | None = None,
               legend_size: int = 8) -> None:
    """A metric against a factor: one panel per list of lines, each line its means with error bars of the
    95% interval (a note under the plot says so; the legend gives n)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 if len(panels) == 1 else 5 * len(panels), 3.8),
                             squeeze=False)
    for j, (ax, lines) in enumerate(zip(axes[0], panels)):
        for i, ln in enumerate(lines):
            ns = sorted(set(ln.n or []))
            n = "" if not ns else f" (n={ns[0]})" if len(ns) == 1 else f" (n={ns[0]}-{ns[-1]})"
            ax.errorbar(ln.x, ln.y, yerr=ln.err, marker="o", capsize=3, linestyle=ln.style,
                        color=ln.color or f"C{i % 10}", label=ln.label + n)
        if logx:  # ticks at the factor's own values: 0.1, 0.5, 1 read better than powers of ten
            ax.set_xscale("log")
            ticks = sorted({x for ln in lines for x in ln.x})
            ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
            ax.minorticks_off()
        if xticklabels is not None:
            ax.set_xticks(range(len(xticklabels)), xticklabels, fontsize=7)
        ax.set_xlabel(xlabel)
        if j < len(titles):
            ax.set_title(titles[j], fontsize=9)
        if j < len(ylabels):
            ax.set_ylabel(ylabels[j])
    axes[0][-1].legend(fontsize=legend_size)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.text(0.5, 0.005, "points: mean over n seed runs, final round; bars: 95% Student-t interval", ha="center",
             fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save_figure(fig, path)
    plt.close(fig)


# --- the generic report ----------------------------------------------------------------------------
def _factor_key(value: str) -> tuple:
    """Sort key of a factor value: '-' (several values) first, numbers by value, then names."""
    num = as_number(value)
    return (-1, 0.0, "") if value == "-" else (0, num, "") if num is not None else (1, 0.0, value)


def factor_names(records: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(all factors, the numeric ones): numeric factors first, each group alphabetical."""
    values: dict[str, set] = defaultdict(set)
    for r in records:
        for k, v in factors(r).items():
            values[k].add(v)
    numeric = sorted(k for k, vs in values.items() if all(as_number(v) is not None for v in vs))
    return numeric + sorted(k for k in values if k not in numeric), numeric


def cell_key(rec: dict[str, Any]) -> str:
    """A record's cell: its name, else its factors (a run tagged without a cell.name)."""
    return rec.get("cell_name") or "/".join(f"{k}={v}" for k, v in sorted(factors(rec).items()))


def generic_rows(records: list[dict[str, Any]], keys: tuple[str, ...] = KEYS) -> list[dict[str, Any]]:
    """One row per cell (each metric a Stat over its seed runs), and the zero-shot rows:
    cells whose zero-shot values agree seed by seed scored the same clients, so they share one row,
    with '-' for the factors whose values differ among them."""
    names, _ = factor_names(records)
    cells: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        cells[cell_key(r)].append(r)
    rows = []
    shared: dict[tuple, list] = {}
    for name, rs in cells.items():
        row = {"cell": name, "factors": {k: factors(rs[0]).get(k, "") for k in names}, "n": len(rs),
               "zero_shot": False, **{k: stat(rs, k) for k in keys}}
        rows.append(row)
        zs = zero_shot_records(rs)
        if zs:
            sig = tuple(sorted((z["seed"], *(f"{z['metrics'].get(k, math.nan):.10g}" for k in keys)) for z in zs))
            shared.setdefault(sig, [zs, []])[1].append(row["factors"])
    for zs, cell_factors in shared.values():
        common = {k: cell_factors[0][k] if all(f[k] == cell_factors[0][k] for f in cell_factors) else "-"
                  for k in names}
        rows.append({"cell": "zero-shot", "factors": common, "n": len(zs), "zero_shot": True,
                     **{k: stat(zs, k) for k in keys}})
    return sorted(rows, key=lambda r: (*(_factor_key(r["factors"][k]) for k in names), not r["zero_shot"], r["cell"]))


def present(rows: list[dict[str, Any]], keys: tuple[str, ...] = KEYS) -> list[str]:
    """The metrics some row has a value of."""
    return [k for k in keys if any(not math.isnan(r[k][0]) for r in rows)]


def generic_table(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    names, numeric = factor_names(records)
    keys = present(rows)
    widths = {k: max(len(k), *(len(str(r["factors"][k])) for r in rows)) for k in names}
    cw = max(4, *(len(r["cell"]) for r in rows))
    head = (f"{'cell':<{cw}}  " + "".join(f"{k:>{widths[k]}}  " if k in numeric else f"{k:<{widths[k]}}  " for k in names)
            + f"{'n':>3}  " + "  ".join(pm_head(LABELS.get(k, k)) for k in keys))
    lines = [head, "-" * len(head)]
    for r in rows:
        facs = "".join(f"{r['factors'][k]:>{widths[k]}}  " if k in numeric else f"{r['factors'][k]:<{widths[k]}}  "
                       for k in names)
        lines.append(f"{r['cell']:<{cw}}  {facs}{r['n']:>3}  " + "  ".join(pm(r[k]) for k in keys))
    lines.append(f"(percent; {INTERVAL_NOTE}, final round. zero-shot: the foundation model's "
                 "zero-shot head, untrained, on the same clients; one row for the cells it scored alike, '-' for "
                 "the factors that differ among them." + data_note(data_names(records)) + ")")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def generic_report(client, parent, records: list[dict[str, Any]], out: Path, contrasts=()) -> tuple[str, list[Path]]:
    """The generic report: table (text and table.csv), curves over rounds, metrics against each numeric
    factor. A study file's `report:` (the parent's `report` tag) picks the metrics and the factor to
    plot against."""
    import json

    spec = json.loads(parent.data.tags.get("report") or "{}")
    rows = generic_rows(records, tuple(spec.get("metrics") or KEYS))
    names, numeric = factor_names(records)
    if spec.get("plot_against"):
        numeric = [k for k in numeric if k == spec["plot_against"]]
    keys = present(rows)
    files = [out / "table.csv"]
    write_csv(files[0], ["cell", *names, "n", *[c for k in keys for c in (*pct_header(k), f"{k}_n")]],
              ([r["cell"], *(r["factors"][k] for k in names), r["n"], *[v for k in keys for v in (*pct(r[k]), r[k].n)]]
               for r in rows))
    cells = [r for r in rows if not r["zero_shot"]]
    by_cell = defaultdict(list)
    for rec in records:
        by_cell[cell_key(rec)].append(rec)

    def split(row, panel_factors):  # (panel, series) of a cell: the panel factors' values, the rest's
        f = row["factors"]
        return (", ".join(f"{k} {f[k]}" for k in panel_factors) or "all cells",
                ", ".join(f"{f[k]}" for k in names if k not in panel_factors) or row["cell"])

    # curves: one panel per combination of the numeric factors (the partition, usually), one line per cell
    groups = {split(r, numeric): by_cell[r["cell"]] for r in cells}
    for key in (WORST_CLIENT_ACC, MEAN_CLIENT_ACC):
        if key in keys:
            files.append(out / f"{key}_over_rounds.png")
            plot_curves(client, groups, key, files[-1], ylabel=f"{LABELS[key]} (%)",
                        title=titled(f"{LABELS[key]} over rounds", records))
    # each numeric factor on the x axis, one line per combination of the other factors
    shown = [k for k in keys if k != "global_acc"][:3]
    for factor in numeric if shown else ():
        def x(r, factor=factor):
            return as_number(r["factors"][factor])
        lines: dict[str, list[dict]] = defaultdict(list)
        for r in sorted(cells, key=x):
            lines[", ".join(f"{k} {r['factors'][k]}" for k in names if k != factor) or "all"].append(r)
        panels = [[Line(label, [x(r) for r in rs], [100 * r[k][0] for r in rs], [half_width(r[k]) for r in rs],
                        color=f"C{i % 10}", n=[r[k].n for r in rs]) for i, (label, rs) in enumerate(lines.items())]
                  for k in shown]
        xs = [x(r) for r in cells]
        files.append(out / f"metrics_vs_{_safe(factor)}.png")
        plot_lines(panels, files[-1], xlabel=factor, ylabels=[f"{LABELS.get(k, k)} (%)" for k in shown],
                   titles=[LABELS.get(k, k) for k in shown], suptitle=titled(f"final round against {factor}", records),
                   logx=min(xs) > 0 and max(xs) >= 10 * min(xs))
    return generic_table(rows, records), files
