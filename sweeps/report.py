"""Tables and plots of a finished launch, read back from MLflow.

    python -m sweeps.report fairness_paradox                     # the latest finished launch
    python -m sweeps.report rank_collapse --profile smoke        # rank-collapse table and figure
    python -m sweeps.report lora_fair                            # LoRA-FAIR Table-1-shaped table
    python -m sweeps.report fed_lpfm                             # methods x alpha, beside the teachers
    python -m sweeps.report fedpurel                             # GM / PM All, Many, Medium, Few, balancedness
    python -m sweeps.report fairness_paradox --run-id <parent>   # a given launch
    python -m sweeps.report fairness_paradox --tracking-uri http://127.0.0.1:5000 --out reports/

Prints the paper-style table (model x aggregation x alpha: mean client accuracy, worst-client
accuracy and gap, as mean ± sd over the seeded re-runs of each cell's best configuration, final
round), beside the paper's numbers (METHODS.md 1.5), and, where the control levels ran, whether
the worst-client gap at the smallest alpha follows the pretraining priors. Writes three plots
(gap against alpha per model; per-client accuracy at the smallest alpha; worst-client accuracy
over rounds) and the table as CSV to --out, and logs them to the launch's parent run under report/.
The LoRA studies' reports are described in sweeps/report_lora.py, the foundation-model-prior
studies' (fed_lpfm, fedpurel) in sweeps/report_priors.py.
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from sweeps.report_lora import lora_fair_report, rank_collapse_report
from sweeps.report_priors import fed_lpfm_report, fedpurel_report

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("mean_client_acc", "worst_client_acc", "gap", "balancedness")

# METHODS.md 1.5: AG News, K=10, seed 42, final round; (avg, worst, gap) in percent. The paper's FM
# arm is DistilBERT + LoRA; its FedAvgW row is beta 0.5 at round 20.
PAPER = {
    ("textcnn", "fedavg", 0.1): (86.6, 54.5, 32.2), ("fm_lora", "fedavg", 0.1): (80.8, 30.7, 50.1),
    ("textcnn", "fedavg", 0.5): (95.6, 91.9, 3.7), ("fm_lora", "fedavg", 0.5): (93.6, 92.3, 1.3),
    ("textcnn", "fedavg", 1.0): (94.9, 89.3, 5.6), ("fm_lora", "fedavg", 1.0): (93.1, 93.1, 0.0),
    ("textcnn", "fedavg", 5.0): (97.8, 94.7, 3.1), ("fm_lora", "fedavg", 5.0): (91.3, 91.3, 0.0),
    ("fm_lora", "fedavgw", 0.1): (77.2, 17.4, 59.8),
}
MODEL_ORDER = ("zero_shot", "textcnn", "fm_lora", "fm_full", "fm_scratch")
PRETRAINED = ("fm_lora", "fm_full")
FROM_SCRATCH = ("textcnn", "fm_scratch")


class ReportError(RuntimeError):
    pass


def find_parent(client, study: str, run_id: str | None = None, profile: str | None = None):
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


def seed_records(client, parent) -> list[dict[str, Any]]:
    """The seeded re-runs of the launch: one record per trial (cell, seed, final metrics, run id)."""
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    out = []
    for run in runs:
        tags = run.data.tags
        if tags.get("cell.stage") != "seeds" or run.info.status != "FINISHED":
            continue
        m = run.data.metrics
        if m.get("diverged"):
            continue
        out.append({"model": tags["cell.model"], "aggregation": tags["cell.aggregation"],
                    "alpha": float(tags["cell.alpha"]), "cell_name": tags.get("cell.name", ""),
                    "seed": int(float(run.data.params.get("seed", "0"))), "run_id": run.info.run_id,
                    "metrics": m, "cell": {k[5:]: v for k, v in tags.items() if k.startswith("cell.")}})
    if not out:
        raise ReportError(f"launch {parent.info.run_id} has no finished seed runs")
    return out


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds per (model, aggregation, alpha); NaN-free values only."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["aggregation"], r["alpha"])].append(r)
    rows = []
    for (model, agg, alpha), rs in groups.items():
        row: dict[str, Any] = {"model": model, "aggregation": agg, "alpha": alpha, "seeds": len(rs)}
        for k in KEYS:
            vals = [r["metrics"][k] for r in rs if not math.isnan(r["metrics"].get(k, math.nan))]
            row[k] = statistics.fmean(vals) if vals else math.nan
            row[k + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["paper"] = PAPER.get((model, agg, alpha))
        rows.append(row)
    rows += zero_shot_rows(records)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    return sorted(rows, key=lambda r: (r["alpha"], order.get(r["model"], 99), r["aggregation"]))


ZERO_SHOT_KEYS = {"mean_client_acc": "teacher_mean_client_acc", "worst_client_acc": "teacher_worst_client_acc",
                  "balancedness": "teacher_balancedness"}


def zero_shot_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per alpha, the foundation model's zero-shot head on the same clients (one record per seed: a seed
    fixes the partition), as a row of the table: model `zero_shot`, aggregation `-`."""
    per_alpha: dict[float, dict[int, dict]] = defaultdict(dict)
    for r in records:
        if not math.isnan(r["metrics"].get("teacher_mean_client_acc", math.nan)):
            per_alpha[r["alpha"]].setdefault(r["seed"], r["metrics"])
    rows = []
    for alpha, by_seed in per_alpha.items():
        row: dict[str, Any] = {"model": "zero_shot", "aggregation": "-", "alpha": alpha, "seeds": len(by_seed),
                               "paper": None}
        values = {k: [m[t] for m in by_seed.values()] for k, t in ZERO_SHOT_KEYS.items()}
        values["gap"] = [a - b for a, b in zip(values["mean_client_acc"], values["worst_client_acc"])]
        for k in KEYS:
            row[k] = statistics.fmean(values[k])
            row[k + "_sd"] = statistics.stdev(values[k]) if len(values[k]) > 1 else 0.0
        rows.append(row)
    return rows


def priors_verdict(rows: list[dict[str, Any]]) -> str | None:
    """At the smallest alpha, with every control level present under FedAvg: do the pretrained levels
    have the larger worst-client gap (the paper's claim) beyond one seed sd on each side?"""
    alpha = min(r["alpha"] for r in rows)
    gap = {r["model"]: r for r in rows if r["alpha"] == alpha and r["aggregation"] == "fedavg"}
    if not all(m in gap for m in PRETRAINED + FROM_SCRATCH):
        return None
    lo_pre = min(gap[m]["gap"] - gap[m]["gap_sd"] for m in PRETRAINED)
    hi_pre = max(gap[m]["gap"] + gap[m]["gap_sd"] for m in PRETRAINED)
    lo_scr = min(gap[m]["gap"] - gap[m]["gap_sd"] for m in FROM_SCRATCH)
    hi_scr = max(gap[m]["gap"] + gap[m]["gap_sd"] for m in FROM_SCRATCH)
    values = ", ".join(f"{m} {100 * gap[m]['gap']:.1f}" for m in PRETRAINED + FROM_SCRATCH)
    if lo_pre > hi_scr:
        answer = "yes: both pretrained levels have a larger gap than both from-scratch levels"
    elif hi_pre < lo_scr:
        answer = "no, the reverse: the from-scratch levels have the larger gap"
    else:
        same_arch = gap["fm_full"]["gap"] - gap["fm_scratch"]["gap"]
        answer = (f"not separable within one seed sd; same encoder, pretrained minus scratch: "
                  f"{100 * same_arch:+.1f} points")
    return f"Does the worst-client gap at alpha {alpha:g} follow the priors? {answer} (gap, %: {values})"


def _pm(row: dict[str, Any], key: str) -> str:
    return f"{100 * row[key]:5.1f} ± {100 * row[key + '_sd']:4.1f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'alpha':>5}  {'model':<11}{'agg':<9}{'seeds':>5}  {'mean acc':>12}  {'worst acc':>12}  "
            f"{'gap':>12}  {'balanced':>12}   paper avg/worst/gap")
    lines = [head, "-" * len(head)]
    for r in rows:
        paper = "/".join(f"{v:.1f}" for v in r["paper"]) if r["paper"] else "-"
        lines.append(f"{r['alpha']:>5g}  {r['model']:<11}{r['aggregation']:<9}{r['seeds']:>5}  "
                     f"{_pm(r, 'mean_client_acc')}  {_pm(r, 'worst_client_acc')}  {_pm(r, 'gap')}  "
                     f"{_pm(r, 'balancedness')}   {paper}")
    lines.append("(percent; mean ± sd over seeds, final round. zero_shot: the foundation model's own zero-shot head "
                 "(no training) on the same clients, the prior before fine-tuning. Paper: METHODS.md 1.5, AG News, 10 "
                 "clients, one seed; its FM is DistilBERT+LoRA, its FedAvgW row beta 0.5. Compare the shape, not the "
                 "level, when the profile is not `paper`.)")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["alpha", "model", "aggregation", "seeds", *[c for k in KEYS for c in (k, k + "_sd")],
                    "paper_avg", "paper_worst", "paper_gap"])
        for r in rows:
            w.writerow([r["alpha"], r["model"], r["aggregation"], r["seeds"],
                        *[r[c] for k in KEYS for c in (k, k + "_sd")], *(r["paper"] or ("", "", ""))])


def _label(model: str, agg: str) -> str:
    return model if agg == "fedavg" else f"{model} ({agg})"


def _order(model: str, agg: str) -> tuple:
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else 99, agg)


def _color(model: str, agg: str) -> str:
    """One colour per model level and aggregation, the same in every plot."""
    levels = [(m, "fedavg") for m in MODEL_ORDER] + [("fm_lora", "fedavgw")]
    i = levels.index((model, agg)) if (model, agg) in levels else len(levels)
    return f"C{i % 10}"


def plot_gap_vs_alpha(rows, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (model, agg) in sorted({(r["model"], r["aggregation"]) for r in rows}, key=lambda k: _order(*k)):
        rs = sorted((r for r in rows if (r["model"], r["aggregation"]) == (model, agg)), key=lambda r: r["alpha"])
        ax.errorbar([r["alpha"] for r in rs], [100 * r["gap"] for r in rs], yerr=[100 * r["gap_sd"] for r in rs],
                    marker="o", capsize=3, label=_label(model, agg), color=_color(model, agg))
    ax.set_xscale("log")
    ax.set_xlabel("Dirichlet alpha (smaller = more skewed)")
    ax.set_ylabel("gap = mean - worst client acc (%)")
    ax.set_title("worst-client gap against label skew")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_client(records, alpha: float, path: Path) -> None:
    """Per-client accuracy of the first seed at `alpha`: the same partition for every model, so bars
    of one client compare directly."""
    import matplotlib.pyplot as plt

    at = [r for r in records if r["alpha"] == alpha]
    seed = min(r["seed"] for r in at)
    at = sorted((r for r in at if r["seed"] == seed), key=lambda r: _order(r["model"], r["aggregation"]))
    clients = sorted({int(k.split("/")[1]) for r in at for k in r["metrics"] if k.startswith("client_acc/")})
    fig, ax = plt.subplots(figsize=(max(5.5, 0.5 * len(clients) * max(1, len(at)) / 2), 3.6))
    width = 0.8 / max(1, len(at))
    for i, r in enumerate(at):
        vals = [100 * r["metrics"].get(f"client_acc/{c}", math.nan) for c in clients]
        ax.bar([c + (i - (len(at) - 1) / 2) * width for c in clients], vals, width, label=_label(r["model"], r["aggregation"]),
               color=_color(r["model"], r["aggregation"]))
    ax.set_xticks(clients)
    ax.set_xlabel("client")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"per-client accuracy at alpha {alpha:g} (seed {seed}, final round)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_worst_over_rounds(client, records, path: Path) -> None:
    """Mean over seeds of worst-client accuracy at every round, one panel per alpha."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    alphas = sorted({r["alpha"] for r in records})
    fig, axes = plt.subplots(1, len(alphas), figsize=(3.4 * len(alphas), 3.2), sharey=True, squeeze=False)
    for ax, alpha in zip(axes[0], alphas):
        by_cell: dict[tuple, list[dict[int, float]]] = defaultdict(list)
        for r in records:
            if r["alpha"] == alpha:
                hist = client.get_metric_history(r["run_id"], "worst_client_acc")
                by_cell[(r["model"], r["aggregation"])].append({m.step: m.value for m in hist})
        for (model, agg), curves in sorted(by_cell.items(), key=lambda kv: _order(*kv[0])):
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(steps, [100 * statistics.fmean(c[s] for c in curves) for s in steps], marker=".",
                    label=_label(model, agg), color=_color(model, agg))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"alpha {alpha:g}")
        ax.set_xlabel("round")
    axes[0][0].set_ylabel("worst-client acc (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("worst-client accuracy over rounds (mean over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fairness_report(client, parent, records, out: Path) -> tuple[str, list[Path]]:
    rows = summarize(records)
    verdict = priors_verdict(rows)
    text = format_table(rows) + ("\n\n" + verdict if verdict else "")
    smallest = min(r["alpha"] for r in records)
    files = [out / "table.csv", out / "gap_vs_alpha.png", out / f"per_client_alpha{smallest:g}.png",
             out / "worst_client_over_rounds.png"]
    write_csv(rows, files[0])
    plot_gap_vs_alpha(rows, files[1])
    plot_per_client(records, smallest, files[2])
    plot_worst_over_rounds(client, records, files[3])
    return text, files


REPORTS = {"fairness_paradox": fairness_report, "rank_collapse": rank_collapse_report, "lora_fair": lora_fair_report,
           "fed_lpfm": fed_lpfm_report, "fedpurel": fedpurel_report}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweeps.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study name, e.g. fairness_paradox")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<repo>/mlflow/mlflow.db)")
    p.add_argument("--run-id", help="the launch's parent run (default: the latest finished launch)")
    p.add_argument("--profile", help="with no --run-id: the latest finished launch of this profile")
    p.add_argument("--out", help="folder for the PNG and CSV files (default: reports/<study>-<run id>/)")
    p.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sweeps.studies import STUDIES
    from sweeps.tracking import TrackingError, check_tracking_uri, default_tracking_uri

    if args.study not in STUDIES:
        print(f"error: unknown study {args.study!r}; allowed: {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    uri = args.tracking_uri or default_tracking_uri()
    try:
        check_tracking_uri(uri)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        parent = find_parent(client, args.study, args.run_id, args.profile)
        records = seed_records(client, parent)
    except (TrackingError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tags = parent.data.tags
    print(f"{args.study}: launch {parent.info.run_id} (profile {tags.get('profile')}, commit "
          f"{tags.get('git_commit', '?')[:10]}), {len(records)} seed runs\n")
    import matplotlib

    matplotlib.use("Agg")
    out = Path(args.out) if args.out else ROOT / "reports" / f"{args.study}-{parent.info.run_id[:8]}"
    out.mkdir(parents=True, exist_ok=True)
    text, files = REPORTS[args.study](client, parent, records, out)
    print(text)
    (out / "table.txt").write_text(text + "\n")
    files.append(out / "table.txt")
    if not args.no_log:
        for f in files:
            client.log_artifact(parent.info.run_id, str(f), artifact_path="report")
    print(f"\nwrote {', '.join(f.name for f in files)} to {out}"
          + ("" if args.no_log else f"; logged under report/ of run {parent.info.run_id}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
