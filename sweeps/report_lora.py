"""Reports of the federated LoRA studies, from a launch's seeded re-runs in MLflow.

rank_collapse: accuracy table (method x rank profile x alpha: mean and worst client accuracy, gap,
and the final energy outside the shared rank) and raFLoRA's rank-collapse figure: the energy of the
global update outside the smallest client rank, 1 - rho_rmin, against round, one line per method.
lora_fair: a table shaped like LoRA-FAIR's Tables 1 and 2 (one row per method; per-domain accuracy
where the data has domains, then the average, and the worst client), one block per partition setting
(and dataset), each beside the paper's ViT averages of the same setting and dataset, its block saying
which table they are (METHODS.md 5.5), and accuracy against round per method.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from search_spaces.lora import LORA_FAIR_METHODS, RANK_COLLAPSE_METHODS

# METHODS.md 5.5 (the paper's Tables 1 and 2): ViT-B/16, average over the six domains (percent), by
# (table, dataset). Table 1 is feature non-IID, Table 2 feature + label non-IID; no FFA-LoRA reference is
# taken from Table 2 (METHODS.md 5.5 lists none; the paper text's DomainNet row repeats Table 1's).
LORA_FAIR_PAPER = {
    (1, "domainnet"): {"ffa_lora": 72.82, "fedit": 75.75, "flora": 75.53, "flexlora": 76.02, "lora_fair": 77.07},
    (1, "nicopp"): {"ffa_lora": 90.28, "fedit": 90.58, "flora": 90.93, "flexlora": 90.60, "lora_fair": 91.24},
    (2, "domainnet"): {"fedit": 73.89, "flora": 74.26, "flexlora": 74.25, "lora_fair": 74.99},
    (2, "nicopp"): {"fedit": 89.48, "flora": 89.60, "flexlora": 89.65, "lora_fair": 90.04},
}
PAPER_TABLES = {1: "feature non-IID", 2: "feature + label non-IID"}
DATASET_NAMES = {"domainnet": "DomainNet", "nicopp": "NICO++"}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v == v]
    if not vals:
        return math.nan, 0.0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _pm(pair: tuple[float, float], scale: float = 100.0) -> str:
    m, sd = pair
    return "    -      " if math.isnan(m) else f"{scale * m:5.1f} ± {scale * sd:4.1f}"


def zero_shot_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The zero-shot row's records: one per seed (a seed fixes the partition, so the zero-shot head scores
    the same clients in every cell), its teacher_* metrics under the model metrics' names."""
    by_seed: dict[int, dict] = {}
    for r in records:
        m = r["metrics"]
        if not math.isnan(m.get("teacher_mean_client_acc", math.nan)):
            by_seed.setdefault(r["seed"], {**r, "aggregation": "zero_shot", "metrics": {
                "mean_client_acc": m["teacher_mean_client_acc"], "worst_client_acc": m["teacher_worst_client_acc"],
                "gap": m["teacher_mean_client_acc"] - m["teacher_worst_client_acc"], "global_acc": m["teacher_acc"],
                "balancedness": m["teacher_balancedness"]}})
    return list(by_seed.values())


def _num(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _curves_plot(client, groups: dict[str, list[dict]], panels, key: str, ylabel: str, title: str,
                 methods: tuple[str, ...], path: Path, scale: float = 100.0,
                 baselines: dict[str, float] | None = None) -> None:
    """One panel per panel key, one line per method: the mean over seeds of `key` at every round;
    `baselines` adds a dashed horizontal line per panel (a zero-shot model's value)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 3.6 * len(panels)), 3.6), sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, method in enumerate(methods):
            runs = groups.get((panel, method), [])
            curves = [_history(client, r["run_id"], key) for r in runs]
            curves = [c for c in curves if c]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(steps, [scale * statistics.fmean(c[s] for c in curves) for s in steps], marker=".",
                    label=method, color=f"C{i}")
        if baselines and baselines.get(panel) == baselines.get(panel):  # not NaN
            ax.axhline(scale * baselines[panel], color="gray", linestyle="--", label="zero-shot")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("round")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- rank_collapse -------------------------------------------------------------------------------
def rank_collapse_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["alpha"], r["cell"].get("rank_profile", "?"), r["aggregation"])].append(r)
    for alpha, rp in {(a, p) for a, p, _ in groups}:
        groups[(alpha, rp, "zero_shot")] = zero_shot_records(
            [r for (a, p, _), rs in list(groups.items()) if (a, p) == (alpha, rp) for r in rs])
    order = {m: i for i, m in enumerate(("zero_shot",) + RANK_COLLAPSE_METHODS)}
    rows = []
    for (alpha, rp, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99))):
        if not rs:
            continue
        row = {"alpha": alpha, "rank_profile": rp, "method": method, "seeds": len(rs)}
        for k in ("mean_client_acc", "worst_client_acc", "gap", "energy_outside_shared", "effective_rank"):
            row[k] = _mean_sd([r["metrics"].get(k, math.nan) for r in rs])
        rows.append(row)
    return rows


def rank_collapse_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'alpha':>5}  {'rank profile':<18}{'method':<10}{'seeds':>5}  {'mean acc':>12}  {'worst acc':>12}  "
            f"{'gap':>12}  {'1-rho_rmin':>12}  {'eff. rank':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['alpha']:>5g}  {r['rank_profile']:<18}{r['method']:<10}{r['seeds']:>5}  "
                     f"{_pm(r['mean_client_acc'])}  {_pm(r['worst_client_acc'])}  {_pm(r['gap'])}  "
                     f"{_pm(r['energy_outside_shared'])}  {_num(r['effective_rank'][0]):>7}")
    lines.append("(percent; mean ± sd over seeds, final round. 1-rho_rmin: share of the global update's energy "
                 "outside the smallest client rank, averaged over LoRA layers; raFLoRA's claim is that it decays "
                 "toward 0 under FlexLoRA/HetLoRA-style aggregation and does not under raFLoRA. zero_shot: the "
                 "foundation model's zero-shot head on the same clients, untrained. No verified reference numbers "
                 "exist (METHODS.md 4.5).)")
    return "\n".join(lines)


def rank_collapse_report(client, parent, records, out: Path) -> tuple[str, list[Path]]:
    rows = rank_collapse_rows(records)
    text = rank_collapse_table(rows)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(f"{r['cell'].get('rank_profile', '?')}, alpha {r['alpha']:g}", r["aggregation"])].append(r)
    panels = sorted({p for p, _ in groups})
    files = [out / "table.csv", out / "energy_outside_shared.png", out / "worst_client_over_rounds.png"]
    _write_csv(files[0], ["alpha", "rank_profile", "method", "seeds"], rows,
               ["mean_client_acc", "worst_client_acc", "gap", "energy_outside_shared", "effective_rank"])
    _curves_plot(client, groups, panels, "energy_outside_shared", "1 - rho_rmin (%)",
                 "energy of the global update outside the shared rank (mean over seeds)",
                 RANK_COLLAPSE_METHODS, files[1])
    _curves_plot(client, groups, panels, "worst_client_acc", "worst-client acc (%)",
                 "worst-client accuracy over rounds (mean over seeds)", RANK_COLLAPSE_METHODS, files[2])
    return text, files


# --- lora_fair -----------------------------------------------------------------------------------
def _setting(r: dict[str, Any]) -> str:
    kind = r["cell"].get("partition", "dirichlet")
    label = "feature non-IID (domain)" if kind == "domain" else \
        f"feature + label non-IID (alpha {r['alpha']:g})" if kind == "domain_dirichlet" else f"label skew, alpha {r['alpha']:g}"
    ds = r["cell"].get("dataset")
    return f"{label}, {DATASET_NAMES.get(ds, ds)}" if ds else label


def paper_reference(cell: dict[str, Any]) -> tuple[int | None, str, dict[str, float]]:
    """The paper's table for a cell's setting, its label and its averages for the cell's dataset (None,
    "", {} where the paper has none). A cell names its table and dataset (the paper profile); an older
    domain cell without them ran DomainNet (the only dataset the paper profile had), its table read off
    its partition."""
    raw = cell.get("table") or {"domain": 1, "domain_dirichlet": 2}.get(cell.get("partition"))  # a tag: a string
    table, ds = (int(raw) if raw else None), cell.get("dataset", "domainnet")
    ref = LORA_FAIR_PAPER.get((table, ds), {})
    if not ref:
        return None, "", {}
    return table, f"Table {table} ({PAPER_TABLES[table]}), {DATASET_NAMES.get(ds, ds)}, ViT-B/16", ref


def lora_fair_rows(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    domains = sorted({k.split("/", 1)[1] for r in records for k in r["metrics"] if k.startswith("domain_acc/")})
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(_setting(r), r["aggregation"])].append(r)
    cells = {_setting(r): r["cell"] for r in records}  # a setting's cells share its reference
    for setting in {st for st, _ in groups}:
        groups[(setting, "zero_shot")] = zero_shot_records([r for (st, _), rs in list(groups.items()) if st == setting
                                                            for r in rs])
    order = {m: i for i, m in enumerate(("zero_shot",) + LORA_FAIR_METHODS)}
    rows = []
    table_of = {st: paper_reference(c)[0] or 0 for st, c in cells.items()}  # Table 1's blocks before Table 2's
    for (setting, method), rs in sorted(groups.items(), key=lambda kv: (table_of[kv[0][0]], kv[0][0],
                                                                         order.get(kv[0][1], 99))):
        if not rs:
            continue
        row: dict[str, Any] = {"setting": setting, "method": method, "seeds": len(rs)}
        for d in domains:
            row[f"domain_acc/{d}"] = _mean_sd([r["metrics"].get(f"domain_acc/{d}", math.nan) for r in rs])
        avg_key = "domain_avg_acc" if domains else "global_acc"
        row["avg"] = _mean_sd([r["metrics"].get(avg_key, math.nan) for r in rs])
        row["worst_client_acc"] = _mean_sd([r["metrics"].get("worst_client_acc", math.nan) for r in rs])
        table, label, ref = paper_reference(cells[setting])
        row["paper"], row["paper_table"], row["paper_setting"] = ref.get(method), table, label
        row["paper_ref"] = label if row["paper"] is not None else ""  # what the paper column's value is
        rows.append(row)
    return rows, domains


def lora_fair_table(rows: list[dict[str, Any]], domains: list[str]) -> str:
    cols = [d[:12] for d in domains] + ["Avg", "worst client"]
    lines = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        block = [r for r in rows if r["setting"] == setting]
        label, table = block[0]["paper_setting"], block[0]["paper_table"]
        paper_col = f"paper T{table} Avg" if table else "paper Avg"
        head = f"{'method':<11}{'seeds':>5}  " + "  ".join(f"{c:>12}" for c in cols) + f"   {paper_col:>12}"
        lines += [setting + (f"   [paper column: LoRA-FAIR {label}, Avg]" if label else "   [no paper column]"),
                  head, "-" * len(head)]
        for r in block:
            vals = [_pm(r[f"domain_acc/{d}"]) for d in domains] + [_pm(r["avg"]), _pm(r["worst_client_acc"])]
            paper = f"{r['paper']:.2f}" if r["paper"] else "-"
            lines.append(f"{r['method']:<11}{r['seeds']:>5}  " + "  ".join(vals) + f"   {paper:>12}")
        lines.append("")
    lines.append("(percent; mean ± sd over seeds, final round; Avg is the mean of the per-domain accuracies where "
                 "the data has domains, the global test accuracy otherwise; zero_shot: the foundation model's "
                 "zero-shot head, untrained, where it has one. Paper: each block's own setting and dataset, "
                 "LoRA-FAIR Table 1 (feature non-IID) or Table 2 (feature + label non-IID), ViT-B/16 "
                 "(METHODS.md 5.5; Table 2 gives no FFA-LoRA reference here); compare the ordering, not the "
                 "level, off the paper profile.)")
    return "\n".join(lines)


def lora_fair_report(client, parent, records, out: Path) -> tuple[str, list[Path]]:
    rows, domains = lora_fair_rows(records)
    text = lora_fair_table(rows, domains)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(_setting(r), r["aggregation"])].append(r)
    panels = list(dict.fromkeys(_setting(r) for r in sorted(records, key=lambda r: r["alpha"])))
    files = [out / "table.csv", out / "accuracy_over_rounds.png"]
    _write_csv(files[0], ["setting", "method", "seeds"], rows,
               [f"domain_acc/{d}" for d in domains] + ["avg", "worst_client_acc"], extra=["paper", "paper_ref"])
    _curves_plot(client, groups, panels, "domain_avg_acc" if domains else "global_acc", "accuracy (%)",
                 "test accuracy over rounds (mean over seeds)", LORA_FAIR_METHODS, files[1])
    return text, files


def _write_csv(path: Path, ids: list[str], rows, keys: list[str], extra: list[str] = ()) -> None:
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*ids, *[c for k in keys for c in (k, k + "_sd")], *extra])
        for r in rows:
            w.writerow([r[i] for i in ids] + [v for k in keys for v in r[k]] + [r.get(e) for e in extra])
