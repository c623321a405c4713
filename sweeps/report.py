"""Tables and plots of a finished launch, read back from MLflow.

    python -m sweeps.report fairness_paradox                     # the latest finished launch
    python -m sweeps.report rank_collapse --profile smoke        # rank-collapse table and figure
    python -m sweeps.report lora_fair                            # LoRA-FAIR Table-1-shaped table
    python -m sweeps.report fed_lpfm                             # methods x alpha, beside the teachers
    python -m sweeps.report fedpurel                             # GM / PM All, Many, Medium, Few, balancedness
    python -m sweeps.report my_study                             # a study without a report of its own: the generic one
    python -m sweeps.report fairness_paradox --generic           # the generic report of a built-in study
    python -m sweeps.report fairness_paradox --export runs.csv   # also every trial and round as one tidy table
    python -m sweeps.report fairness_paradox --run-id <parent>   # a given launch
    python -m sweeps.report fairness_paradox --tracking-uri http://127.0.0.1:5000 --out reports/

STUDY is the MLflow experiment the launch logged to. The five built-in studies have reports shaped like
their papers' tables; any other study (or --generic) gets the generic report: one row per design cell
(its factors from the trials' cell.* tags), mean ± sd [95% interval] and n over its seed runs of the
final-round metrics (mean_client_acc, worst_client_acc, gap, balancedness, global_acc, where logged),
the foundation model's zero-shot rows where the trials scored one, curves over rounds of worst- and
mean-client accuracy per cell (a band of the 95% interval over seeds), and the metrics against each
numeric factor (e.g. alpha), one line per combination of the other factors.

Every report then says what its numbers are over (seeds, final round, eval protocol; where a gap is 0
by construction) and resolves the study's declared contrasts: each one's estimate, 95% interval, p
(paired by seed where the cells share their partition, else Welch), Holm-adjusted p over the report's
contrasts, and a verdict (docs/statistics.md); also as contrasts.csv. launch.txt records the launch's
command, commit, times and machine. Every plot is a PNG with an SVG beside it.

fairness_paradox: the paper-style table (model x aggregation x alpha: mean client accuracy, worst-client
accuracy, gap and balancedness over the seeded re-runs of each cell's best configuration, final round),
beside the FM Fairness Paradox paper's AG News numbers where the launch ran AG News, and, where the
control levels ran, the answer to whether the gap at the smallest alpha follows pretraining,
adaptation or architecture and capacity (contrasts with intervals); plots of the gap against alpha per model, per-client accuracy at the smallest alpha, and
worst-client accuracy over rounds. The LoRA studies' reports are described in sweeps/report_lora.py,
the foundation-model-prior studies' (fed_lpfm, fedpurel) in sweeps/report_priors.py.

Every table is in percent (accuracies, gaps, balancedness; table.csv's headers end in _%). The files
go to --out and are logged to the launch's parent run under report/.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from fedcore.metrics import BALANCEDNESS, GAP, MEAN_CLIENT_ACC, WORST_CLIENT_ACC
from sweeps.report_common import (INTERVAL_NOTE, LABELS, Line, ReportError, as_number, bare_number_classes, data_names,
                                  cell_key, child_runs, data_note, describe_data, find_parent, generic_report, half_width, is_paper_data,
                                  mean_sd, methods_ref, no_reference, pct, pct_header, plot_curves, plot_lines, pm,
                                  pm_head, save_figure, seed_records, titled, write_csv, zero_shot_records)
from sweeps.contrasts import contrast_rows, contrasts_csv_rows, format_contrasts
from sweeps.stats import LEVEL
from sweeps.report_lora import lora_fair_report, rank_collapse_report
from sweeps.report_priors import fed_lpfm_report, fedpurel_report


ROOT = Path(__file__).resolve().parents[1]
KEYS = (MEAN_CLIENT_ACC, WORST_CLIENT_ACC, GAP, BALANCEDNESS)

# The FM Fairness Paradox paper (Naseer & Shoaib 2026), AG News, K=10, seed 42, final round; (avg, worst,
# gap) in percent (docs/methods.md, section "FM Fairness Paradox"). The paper's FM arm is DistilBERT +
# LoRA; its FedAvgW row is beta 0.5 at round 20.
PAPER = {
    ("textcnn", "fedavg", 0.1): (86.6, 54.5, 32.2), ("fm_lora", "fedavg", 0.1): (80.8, 30.7, 50.1),
    ("textcnn", "fedavg", 0.5): (95.6, 91.9, 3.7), ("fm_lora", "fedavg", 0.5): (93.6, 92.3, 1.3),
    ("textcnn", "fedavg", 1.0): (94.9, 89.3, 5.6), ("fm_lora", "fedavg", 1.0): (93.1, 93.1, 0.0),
    ("textcnn", "fedavg", 5.0): (97.8, 94.7, 3.1), ("fm_lora", "fedavg", 5.0): (91.3, 91.3, 0.0),
    ("fm_lora", "fedavgw", 0.1): (77.2, 17.4, 59.8),
}
PAPER_NAME = "the FM Fairness Paradox paper (Naseer & Shoaib 2026)"
MODEL_ORDER = ("zero_shot", "textcnn", "fm_lora", "fm_full", "fm_scratch")
PRETRAINED = ("fm_lora", "fm_full")
FROM_SCRATCH = ("textcnn", "fm_scratch")


def _row(model: str, agg: str, alpha: float, rs: list[dict[str, Any]]) -> dict[str, Any]:
    """A table row: each metric a Stat (mean, sd, 95% interval, n) over the seed runs."""
    row: dict[str, Any] = {"model": model, "aggregation": agg, "alpha": alpha, "seeds": len(rs), "paper": None}
    for k in KEYS:
        row[k] = mean_sd(r["metrics"].get(k, math.nan) for r in rs)
    return row


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds per (model, aggregation, alpha), NaN-free values only, and per alpha the
    zero-shot row (model `zero_shot`, aggregation `-`); the paper's numbers beside them unless the
    launch's data is tagged as other than AG News."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["aggregation"], r["alpha"])].append(r)
    paper = is_paper_data(data_names(records), "fairness_paradox") is not False
    rows = [dict(_row(*key, rs), paper=PAPER.get(key) if paper else None) for key, rs in groups.items()]
    for alpha in {r["alpha"] for r in records}:
        zs = zero_shot_records([r for r in records if r["alpha"] == alpha])
        if zs:
            rows.append(_row("zero_shot", "-", alpha, zs))
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    return sorted(rows, key=lambda r: (r["alpha"], order.get(r["model"], 99), r["aggregation"]))


# the referee's question: of two arms that differ in one thing, which difference moves the gap
QUESTIONS = (("pretraining", "fm_full", "fm_scratch", "same encoder and full fine-tuning, pretrained or not"),
             ("adaptation", "fm_lora", "fm_full", "both pretrained, LoRA or every weight"),
             ("architecture and capacity", "fm_scratch", "textcnn", "both from scratch, MiniLM or TextCNN"))


def priors_verdict(contrasts: list[dict[str, Any]]) -> str | None:
    """At the smallest alpha, where the control levels ran: the gap contrasts that isolate pretraining,
    adaptation and architecture/capacity, each with its interval and verdict (sweeps/contrasts.py)."""
    gap = [r for r in contrasts if r["metric"] == GAP and not r["interaction"]]
    alphas = sorted({float(r["a_factors"]["alpha"]) for r in gap if "alpha" in r["a_factors"]})
    if not alphas:
        return None
    alpha = alphas[0]
    found = []
    for label, a, b, what in QUESTIONS:
        row = next((r for r in gap if r["a_factors"].get("model") == a and r["b_factors"].get("model") == b
                    and float(r["a_factors"].get("alpha", "nan")) == alpha
                    and r["a_factors"].get("aggregation", "fedavg") == "fedavg"), None)
        if row is not None:
            found.append((label, a, b, what, row))
    if len(found) < len(QUESTIONS):
        return None
    lines = [f"Does the gap at alpha {alpha:g} follow pretraining, or architecture, capacity or adaptation? "
             f"(gap difference, percentage points, {LEVEL:.0%} interval, Holm-adjusted verdict from the contrasts below)"]
    resolved = []
    for label, a, b, what, row in found:
        c = row["result"]
        ci = "" if c.lo != c.lo else f" [{100 * c.lo:+.1f}, {100 * c.hi:+.1f}]"
        lines.append(f"  {label:<26} {a} - {b} ({what}): {100 * c.estimate:+.1f}{ci}, {row['verdict']}")
        if row["verdict"] == "resolved":
            resolved.append(f"{label} ({'widens' if c.estimate > 0 else 'narrows'} it)")
    lines.append("  Answer: " + (f"resolved for {', '.join(resolved)}; the others are not resolved at these seeds."
                                 if resolved else "none of the three is resolved at these seeds: this launch cannot "
                                 "say what the gap follows."))
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]], data: list[str] = ()) -> str:
    """The table; `data`, the launch's data_name tags, decides whether the paper's column applies."""
    paper = is_paper_data(data, "fairness_paradox") is not False
    head = (f"{'alpha':>5}  {'model':<11}{'agg':<9}{'seeds':>5}  "
            + "  ".join(pm_head(LABELS[k]) for k in KEYS) + ("   paper avg/worst/gap" if paper else ""))
    lines = [head, "-" * len(head)]
    for r in rows:
        ref = ("   " + ("/".join(f"{v:.1f}" for v in r["paper"]) if r["paper"] else "-")) if paper else ""
        lines.append(f"{r['alpha']:>5g}  {r['model']:<11}{r['aggregation']:<9}{r['seeds']:>5}  "
                     + "  ".join(pm(r[k]) for k in KEYS) + ref)
    note = (f"(percent; {INTERVAL_NOTE}, final round. zero_shot: the foundation model's own zero-shot head "
            "(no training) on the same clients, the prior before fine-tuning." + data_note(data))
    if paper:
        lines.append(note + f" Paper: {PAPER_NAME}, AG News, 10 clients, one seed ({methods_ref('FM Fairness Paradox')}); "
                     "its FM is DistilBERT+LoRA, its FedAvgW row beta 0.5. Compare the shape, not the level, when "
                     "the profile is not `paper`.)")
    else:
        lines += [note + ")", no_reference(data, PAPER_NAME, "AG News")]
    return "\n".join(lines)


def table_csv(rows: list[dict[str, Any]], path: Path, paper: bool = True) -> None:
    write_csv(path, ["alpha", "model", "aggregation", "seeds", *[c for k in KEYS for c in pct_header(k)]]
              + (["paper_avg_%", "paper_worst_%", "paper_gap_%"] if paper else []),
              ([r["alpha"], r["model"], r["aggregation"], r["seeds"], *[v for k in KEYS for v in pct(r[k])]]
               + (list(r["paper"] or ("", "", "")) if paper else []) for r in rows))


def _label(key: tuple[str, str]) -> str:
    return key[0] if key[1] == "fedavg" else f"{key[0]} ({key[1]})"


def _order(key: tuple[str, str]) -> tuple:
    return (MODEL_ORDER.index(key[0]) if key[0] in MODEL_ORDER else 99, key[1])


def _color(key: tuple[str, str]) -> str:
    """One colour per model level and aggregation, the same in every plot."""
    levels = [(m, "fedavg") for m in MODEL_ORDER] + [("fm_lora", "fedavgw")]
    return f"C{(levels.index(key) if key in levels else len(levels)) % 10}"


def plot_gap_vs_alpha(rows, path: Path, title: str = "worst-client gap against label skew") -> None:
    lines = []
    for key in sorted({(r["model"], r["aggregation"]) for r in rows}, key=_order):
        rs = sorted((r for r in rows if (r["model"], r["aggregation"]) == key), key=lambda r: r["alpha"])
        lines.append(Line(_label(key), [r["alpha"] for r in rs], [100 * r[GAP][0] for r in rs],
                          [half_width(r[GAP]) for r in rs], color=_color(key), n=[r[GAP].n for r in rs]))
    plot_lines([lines], path, xlabel="Dirichlet alpha (smaller = more skewed)", logx=True,
               ylabels=["gap = mean - worst client acc (%)"], titles=[title])


def plot_per_client(records, alpha: float, path: Path) -> None:
    """Per-client accuracy of the first seed at `alpha`: the same partition for every model, so bars
    of one client compare directly."""
    import matplotlib.pyplot as plt

    at = [r for r in records if r["alpha"] == alpha]
    seed = min(r["seed"] for r in at)
    at = sorted((r for r in at if r["seed"] == seed), key=lambda r: _order((r["model"], r["aggregation"])))
    clients = sorted({int(k.split("/")[1]) for r in at for k in r["metrics"] if k.startswith("client_acc/")})
    fig, ax = plt.subplots(figsize=(max(5.5, 0.5 * len(clients) * max(1, len(at)) / 2), 3.6))
    width = 0.8 / max(1, len(at))
    for i, r in enumerate(at):
        key = (r["model"], r["aggregation"])
        vals = [100 * r["metrics"].get(f"client_acc/{c}", math.nan) for c in clients]
        ax.bar([c + (i - (len(at) - 1) / 2) * width for c in clients], vals, width, label=_label(key), color=_color(key))
    ax.set_xticks(clients)
    ax.set_xlabel("client")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(titled(f"per-client accuracy at alpha {alpha:g} (seed {seed}, final round)", records), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def fairness_report(client, parent, records, out: Path, contrasts=()) -> tuple[str, list[Path]]:
    rows = summarize(records)
    data = data_names(records)
    verdict = priors_verdict(list(contrasts))
    text = format_table(rows, data) + ("\n\n" + verdict if verdict else "")
    smallest = min(r["alpha"] for r in records)
    files = [out / "table.csv", out / "gap_vs_alpha.png", out / f"per_client_alpha{smallest:g}.png",
             out / "worst_client_over_rounds.png"]
    table_csv(rows, files[0], paper=is_paper_data(data, "fairness_paradox") is not False)
    plot_gap_vs_alpha(rows, files[1], titled("worst-client gap against label skew", records))
    plot_per_client(records, smallest, files[2])
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["alpha"], (r["model"], r["aggregation"]))].append(r)
    plot_curves(client, groups, WORST_CLIENT_ACC, files[3], panels=sorted({a for a, _ in groups}),
                series=sorted({s for _, s in groups}, key=_order), label=_label, color=_color,
                panel_title=lambda a: f"alpha {a:g}", ylabel="worst-client acc (%)",
                title=titled("worst-client accuracy over rounds", records))
    return text, files


def planned_contrasts(parent, study: str, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """(the contrasts the launch planned, a note): its parent's `contrasts` tag (sweeps/contrasts.py).
    A launch from before that tag gets the built-in study's current declarations (with its controls':
    a superset), matched to the cells the launch recorded, and a note that says so."""
    import json

    from sweeps.contrasts import plan
    from sweeps.report_common import factors
    from sweeps.tracking import joined_tag

    tag = joined_tag(parent.data.tags, "contrasts")
    if tag:
        return json.loads(tag), ""
    from sweeps.studies import get_study

    name = parent.data.tags.get("profile")
    recorded = list({cell_key(r): (cell_key(r), factors(r)) for r in records}.values())
    for controls in (True, False):
        try:
            s = get_study(study, name, controls)
            profile = s.profiles[name]
        except Exception:  # not a built-in study, no such profile, or no controls: try the next
            continue
        specs = profile.options.get("contrasts") or []
        planned = plan(specs, recorded)
        if not planned and s.labels is not None:  # levels recorded under other names (a level's cell: mapping)
            try:
                planned = plan(specs, [(s.cell_name(c), s.labels(c)) for c in s.cells(profile)])
            except Exception:
                planned = []
        if planned:
            return planned, ("Note: this launch predates the contrasts tag; its contrasts are the study file's "
                             "current ones, matched to the cells it recorded.")
    return [], ""


def protocol_note(records: list[dict[str, Any]], tuning_seeds: set[int]) -> str:
    """What every number is over, and where the eval protocol makes a metric degenerate."""
    protocols = sorted({r["params"].get("eval.protocol", "") for r in records} - {""})
    seeds = sorted({r["seed"] for r in records})
    shared = sorted(set(seeds) & tuning_seeds)
    tuned = ", ".join(map(str, sorted(tuning_seeds))) or "-"
    note = (f"Every number is over each cell's seed runs (seeds {', '.join(map(str, seeds))}; "
            + (f"disjoint from the tuning trials' seed {tuned}" if not shared else
               f"WARNING: seed {', '.join(map(str, shared))} is also the tuning trials' seed, so each mean includes "
               "a re-run of the trial chosen for being best (a launch from before seed runs were made disjoint)")
            + f"), final round, eval protocol {', '.join(protocols) or 'unrecorded'}.")
    zero_gap = sorted({cell_key(r) for r in records}
                      - {cell_key(r) for r in records if not abs(r["metrics"].get(GAP, math.nan)) < 1e-9})
    if "class_filtered" in protocols:
        note += (" Under class_filtered each client is scored on the test samples of the classes it holds, so "
                 "clients that hold every class share one test set and their gap is 0 by construction")
        note += (f"; here the gap is 0 on every seed in {', '.join(zero_gap)}." if zero_gap else ".")
    return note + " " + collapse_note(records)


def collapsed(rec: dict[str, Any]) -> bool | None:
    """Whether a seed run's final model is a constant classifier: right on at most one class of the
    global test set (None where the run logged no per-class accuracy)."""
    accs = [v for k, v in rec["metrics"].items() if k.startswith("class_acc/")]
    return sum(v > 0 for v in accs) <= 1 if len(accs) > 1 else None


def collapse_note(records: list[dict[str, Any]]) -> str:
    """Which cells have seed runs that ended as a constant classifier: their spread is then a mix of
    two regimes, not noise around one mean."""
    runs: dict[str, list[bool]] = {}
    for r in records:
        c = collapsed(r)
        if c is not None:
            runs.setdefault(cell_key(r), []).append(c)
    if not runs:
        return "No run logged per-class accuracy, so constant classifiers were not looked for."
    bad = {k: v for k, v in sorted(runs.items()) if any(v)}
    if not bad:
        return (f"No seed run ended as a constant classifier (right on at most one class of the global test "
                f"set; {sum(map(len, runs.values()))} runs checked).")
    return ("Seed runs that ended as a constant classifier (right on at most one class of the global test set): "
            + ", ".join(f"{k} {sum(v)} of {len(v)}" for k, v in bad.items()) + ".")


def provenance(parent, records: list[dict[str, Any]]) -> str:
    """launch.txt: what produced the report, to commit beside it."""
    import time

    tags, info = parent.data.tags, parent.info

    def when(ms):
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000)) if ms else "?"
    wall = f"{(info.end_time - info.start_time) / 60000:.1f} min" if info.end_time and info.start_time else "?"
    return "\n".join([
        f"launch      {info.run_id} ({info.status})",
        f"command     {tags.get('command', '?')}",
        f"commit      {tags.get('git_commit', '?')}",
        f"profile     {tags.get('profile', '?')}",
        f"data        {describe_data(records) or '?'}" + (" (synthetic)" if tags.get("data_synthetic") == "true" else ""),
        f"started     {when(info.start_time)}",
        f"ended       {when(info.end_time)}",
        f"wall time   {wall} (the launch; the report is extra)",
        f"machine     {tags.get('machine', 'not recorded (a launch from before the machine tag)')}",
        f"seed runs   {len(records)}",
    ]) + "\n"


REPORTS = {"fairness_paradox": fairness_report, "rank_collapse": rank_collapse_report, "lora_fair": lora_fair_report,
           "fed_lpfm": fed_lpfm_report, "fedpurel": fedpurel_report}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweeps.report", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study name (the launch's MLflow experiment), e.g. fairness_paradox or your own")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<repo>/mlflow/mlflow.db)")
    p.add_argument("--run-id", help="the launch's parent run (default: the latest finished launch)")
    p.add_argument("--profile", help="with no --run-id: the latest finished launch of this profile")
    p.add_argument("--out", help="folder for the PNG and CSV files (default: reports/<study>-<run id>/)")
    p.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    p.add_argument("--generic", action="store_true",
                   help="the generic report (cells x final-round metrics, curves, metrics against each numeric "
                        "factor) even for a study with a report of its own")
    p.add_argument("--export", metavar="PATH.csv",
                   help="also write every trial of the launch (tuning and seeds) as a tidy table, one row per "
                        "trial and round: its cell's factors, stage, seed, params (param.<key>) and the metrics "
                        "logged at that round, as raw values (fractions in [0, 1], not percent); to PATH.csv, and "
                        "PATH.parquet beside it where pyarrow is installed (see sweeps/export.py)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sweeps.tracking import TrackingError, check_tracking_uri, default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    try:
        check_tracking_uri(uri)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        parent = find_parent(client, args.study, args.run_id, args.profile)
        if args.export:
            from sweeps.export import tidy_rows, write_tidy

            rows = tidy_rows(client, parent, args.study)
            written, note = write_tidy(rows, Path(args.export))
            print(f"exported {len(rows)} rows (trial x round, raw values) to {', '.join(map(str, written))}"
                  + (f"; {note}" if note else ""))
        records = seed_records(client, parent)
    except (TrackingError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    generic = args.generic or args.study not in REPORTS
    tags, data = parent.data.tags, describe_data(records)
    print(f"{args.study}{' (generic report)' if generic else ''}: launch {parent.info.run_id} (profile "
          f"{tags.get('profile')}, commit {tags.get('git_commit', '?')[:10]}), {len(records)} seed runs"
          + (f"; data {data}" if data else "") + "\n")
    if bare_number_classes(records):
        print("note: no zero-shot row: the data's classes are bare numbers, which a zero-shot head cannot read as "
              "prompts; name them with class_names=a,b,... in the data URI\n")
    import matplotlib

    matplotlib.use("Agg")
    out = Path(args.out) if args.out else ROOT / "reports" / f"{args.study}-{parent.info.run_id[:8]}"
    out.mkdir(parents=True, exist_ok=True)
    planned, plan_note = planned_contrasts(parent, args.study, records)
    contrasts = contrast_rows(records, planned)
    text, files = (generic_report if generic else REPORTS[args.study])(client, parent, records, out,
                                                                        contrasts=contrasts)
    tuning_seeds = {int(as_number(r.data.params.get("seed")) or 0) for r in child_runs(client, parent)
                    if r.data.tags.get("cell.stage") == "tune"}
    text += "\n\n" + protocol_note(records, tuning_seeds)
    if contrasts:
        text += "\n\n" + format_contrasts(contrasts) + (f"\n{plan_note}" if plan_note else "")
        files.append(out / "contrasts.csv")
        write_csv(files[-1], *contrasts_csv_rows(contrasts))
    files += [f.with_suffix(".svg") for f in files if f.suffix == ".png" and f.with_suffix(".svg").exists()]
    print(text)
    (out / "table.txt").write_text(text + "\n")
    (out / "launch.txt").write_text(provenance(parent, records))
    files += [out / "table.txt", out / "launch.txt"]
    if not args.no_log:
        for f in files:
            client.log_artifact(parent.info.run_id, str(f), artifact_path="report")
    print(f"\nwrote {', '.join(f.name for f in files)} to {out}"
          + ("" if args.no_log else f"; logged under report/ of run {parent.info.run_id}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
