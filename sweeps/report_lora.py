"""Reports of the federated LoRA studies, from a launch's seeded re-runs in MLflow.

rank_collapse: accuracy table (method x rank profile x alpha: mean and worst client accuracy, gap,
and the final energy outside the shared rank) and raFLoRA's rank-collapse figure: the energy of the
global update outside the smallest client rank, 1 - rho_rmin, against round, one line per method.
lora_fair: a table shaped like LoRA-FAIR's Tables 1 and 2 (one row per method; per-domain accuracy
where the data has domains, then the average, and the worst client), one block per partition setting
(and dataset), each beside the paper's ViT averages of the same setting and dataset where the launch
ran DomainNet or NICO++, its block saying which table they are, and accuracy against round per method.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from fedcore.metrics import GAP, GLOBAL_ACC, MEAN_CLIENT_ACC, WORST_CLIENT_ACC
from sweeps.report_common import (INTERVAL_NOTE, data_names, data_note, is_paper_data, methods_ref, no_reference, pct,
                                  pct_header, plot_curves, pm, pm_head, stat, titled, write_csv, zero_shot_records)

# the order the tables list the methods in (the studies' files name the same ones)
RANK_COLLAPSE_METHODS = ("fedit", "hetlora", "flexlora", "flora", "raflora")
LORA_FAIR_METHODS = ("fedit", "ffa_lora", "flora", "flexlora", "lora_fair")

# LoRA-FAIR (Bian et al., ICCV 2025), Tables 1 and 2: ViT-B/16, average over the six domains (percent),
# by (table, dataset); docs/methods.md, section "LoRA-FAIR". Table 1 is feature non-IID, Table 2
# feature + label non-IID; no FFA-LoRA reference is taken from Table 2 (the paper text's DomainNet row
# repeats Table 1's).
LORA_FAIR_PAPER = {
    (1, "domainnet"): {"ffa_lora": 72.82, "fedit": 75.75, "flora": 75.53, "flexlora": 76.02, "lora_fair": 77.07},
    (1, "nicopp"): {"ffa_lora": 90.28, "fedit": 90.58, "flora": 90.93, "flexlora": 90.60, "lora_fair": 91.24},
    (2, "domainnet"): {"fedit": 73.89, "flora": 74.26, "flexlora": 74.25, "lora_fair": 74.99},
    (2, "nicopp"): {"fedit": 89.48, "flora": 89.60, "flexlora": 89.65, "lora_fair": 90.04},
}
PAPER_TABLES = {1: "feature non-IID", 2: "feature + label non-IID"}
DATASET_NAMES = {"domainnet": "DomainNet", "nicopp": "NICO++"}
RANK_KEYS = (MEAN_CLIENT_ACC, WORST_CLIENT_ACC, GAP, "energy_outside_shared", "effective_rank")


def _num(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _csv_columns(keys, counts=()) -> tuple[list[str], Callable]:
    """Header and row values of (mean, sd) pairs: percent, but the `counts` keys (not fractions)."""
    header = [c for k in keys for c in ([k, k + "_sd"] if k in counts else pct_header(k))]
    return header, lambda r: [v for k in keys for v in (r[k] if k in counts else pct(r[k]))]


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
        if rs:
            rows.append({"alpha": alpha, "rank_profile": rp, "method": method, "seeds": len(rs),
                         **{k: stat(rs, k) for k in RANK_KEYS}})
    return rows


def rank_collapse_table(rows: list[dict[str, Any]], data: list[str] = ()) -> str:
    head = (f"{'alpha':>5}  {'rank profile':<18}{'method':<10}{'seeds':>5}  "
            + "  ".join(pm_head(h) for h in ("mean acc", "worst acc", "gap", "1-rho_rmin")) + f"  {'eff. rank':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['alpha']:>5g}  {r['rank_profile']:<18}{r['method']:<10}{r['seeds']:>5}  "
                     f"{pm(r[MEAN_CLIENT_ACC])}  {pm(r[WORST_CLIENT_ACC])}  {pm(r[GAP])}  "
                     f"{pm(r['energy_outside_shared'])}  {_num(r['effective_rank'][0]):>7}")
    lines.append(f"(percent; {INTERVAL_NOTE}, final round. 1-rho_rmin: share of the global update's energy "
                 "outside the smallest client rank, averaged over LoRA layers; raFLoRA's claim is that it decays "
                 "toward 0 under FlexLoRA/HetLoRA-style aggregation and does not under raFLoRA. zero_shot: the "
                 "foundation model's zero-shot head on the same clients, untrained." + data_note(data) +
                 f" No verified reference numbers exist for raFLoRA (Wu et al. 2026; {methods_ref('raFLoRA')}).)")
    return "\n".join(lines)


def rank_collapse_report(client, parent, records, out: Path, contrasts=()) -> tuple[str, list[Path]]:
    rows = rank_collapse_rows(records)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(f"{r['cell'].get('rank_profile', '?')}, alpha {r['alpha']:g}", r["aggregation"])].append(r)
    panels = sorted({p for p, _ in groups})
    files = [out / "table.csv", out / "energy_outside_shared.png", out / "worst_client_over_rounds.png"]
    header, values = _csv_columns(RANK_KEYS, counts=("effective_rank",))
    write_csv(files[0], ["alpha", "rank_profile", "method", "seeds", *header],
              ([r["alpha"], r["rank_profile"], r["method"], r["seeds"], *values(r)] for r in rows))
    for key, path, ylabel, title in (
            ("energy_outside_shared", files[1], "1 - rho_rmin (%)", "energy of the global update outside the shared rank"),
            (WORST_CLIENT_ACC, files[2], "worst-client acc (%)", "worst-client accuracy over rounds")):
        plot_curves(client, groups, key, path, panels=panels, series=list(RANK_COLLAPSE_METHODS), ylabel=ylabel,
                    title=titled(title, records))
    return rank_collapse_table(rows, data_names(records)), files


# --- lora_fair -----------------------------------------------------------------------------------
def _setting(r: dict[str, Any]) -> str:
    kind = r["cell"].get("partition", "dirichlet")
    label = "feature non-IID (domain)" if kind == "domain" else \
        f"feature + label non-IID (alpha {r['alpha']:g})" if kind == "domain_dirichlet" else f"label skew, alpha {r['alpha']:g}"
    ds = r["cell"].get("dataset")
    return f"{label}, {DATASET_NAMES.get(ds, ds)}" if ds else label


def paper_reference(cell: dict[str, Any], data_name: str | None = None) -> tuple[int | None, str, dict[str, float]]:
    """The paper's table for a cell's setting, its label and its averages for the cell's dataset (None,
    "", {} where the paper has none). A cell names its table and dataset (the paper profile); an older
    domain cell without them ran DomainNet (the only dataset the paper profile had), its table read off
    its partition. A run whose data_name tag is neither DomainNet nor NICO++ has no reference."""
    if data_name and not is_paper_data([data_name], "lora_fair"):
        return None, "", {}
    raw = cell.get("table") or {"domain": 1, "domain_dirichlet": 2}.get(cell.get("partition"))  # a tag: a string
    table = int(raw) if raw else None
    ds = cell.get("dataset") or ("nicopp" if data_name and "nico" in data_name.lower() else "domainnet")
    ref = LORA_FAIR_PAPER.get((table, ds), {})
    if not ref:
        return None, "", {}
    return table, f"Table {table} ({PAPER_TABLES[table]}), {DATASET_NAMES.get(ds, ds)}, ViT-B/16", ref


def lora_fair_rows(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    domains = sorted({k.split("/", 1)[1] for r in records for k in r["metrics"] if k.startswith("domain_acc/")})
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(_setting(r), r["aggregation"])].append(r)
    refs = {_setting(r): paper_reference(r["cell"], r.get("data_name")) for r in records}  # a setting's cells share it
    for setting in {st for st, _ in groups}:
        groups[(setting, "zero_shot")] = zero_shot_records([r for (st, _), rs in list(groups.items()) if st == setting
                                                            for r in rs])
    order = {m: i for i, m in enumerate(("zero_shot",) + LORA_FAIR_METHODS)}
    rows = []
    # Table 1's blocks before Table 2's
    for (setting, method), rs in sorted(groups.items(), key=lambda kv: (refs[kv[0][0]][0] or 0, kv[0][0],
                                                                         order.get(kv[0][1], 99))):
        if not rs:
            continue
        table, label, ref = refs[setting]
        row: dict[str, Any] = {"setting": setting, "method": method, "seeds": len(rs),
                               **{f"domain_acc/{d}": stat(rs, f"domain_acc/{d}") for d in domains},
                               "avg": stat(rs, "domain_avg_acc" if domains else GLOBAL_ACC),
                               WORST_CLIENT_ACC: stat(rs, WORST_CLIENT_ACC),
                               "paper": ref.get(method), "paper_table": table, "paper_setting": label}
        row["paper_ref"] = label if row["paper"] is not None else ""  # what the paper column's value is
        rows.append(row)
    return rows, domains


def lora_fair_table(rows: list[dict[str, Any]], domains: list[str], data: list[str] = ()) -> str:
    cols = [d[:12] for d in domains] + ["Avg", "worst client"]
    lines = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        block = [r for r in rows if r["setting"] == setting]
        label, table = block[0]["paper_setting"], block[0]["paper_table"]
        paper_col = f"paper T{table} Avg" if table else "paper Avg"
        head = f"{'method':<11}{'seeds':>5}  " + "  ".join(pm_head(c) for c in cols) + f"   {paper_col:>12}"
        lines += [setting + (f"   [paper column: LoRA-FAIR {label}, Avg]" if label else "   [no paper column]"),
                  head, "-" * len(head)]
        for r in block:
            vals = [pm(r[f"domain_acc/{d}"]) for d in domains] + [pm(r["avg"]), pm(r[WORST_CLIENT_ACC])]
            paper = f"{r['paper']:.2f}" if r["paper"] else "-"
            lines.append(f"{r['method']:<11}{r['seeds']:>5}  " + "  ".join(vals) + f"   {paper:>12}")
        lines.append("")
    note = (f"(percent; {INTERVAL_NOTE}, final round; Avg is the mean of the per-domain accuracies where the "
            "data has domains, the global test accuracy otherwise; zero_shot: the foundation model's zero-shot "
            "head, untrained, where it has one." + data_note(data))
    if is_paper_data(data, "lora_fair") is False:
        lines += [note + ")", no_reference(data, "LoRA-FAIR (Bian et al., ICCV 2025)", "DomainNet and NICO++")]
    else:
        lines.append(note + " Paper: each block's own setting and dataset, LoRA-FAIR (Bian et al., ICCV 2025) "
                     "Table 1 (feature non-IID) or Table 2 (feature + label non-IID), ViT-B/16 "
                     f"({methods_ref('LoRA-FAIR')}; Table 2 gives no FFA-LoRA reference here); compare the "
                     "ordering, not the level, off the paper profile.)")
    return "\n".join(lines)


def lora_fair_report(client, parent, records, out: Path, contrasts=()) -> tuple[str, list[Path]]:
    rows, domains = lora_fair_rows(records)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(_setting(r), r["aggregation"])].append(r)
    panels = list(dict.fromkeys(_setting(r) for r in sorted(records, key=lambda r: r["alpha"])))
    files = [out / "table.csv", out / "accuracy_over_rounds.png"]
    header, values = _csv_columns([f"domain_acc/{d}" for d in domains] + ["avg", WORST_CLIENT_ACC])
    write_csv(files[0], ["setting", "method", "seeds", *header, "paper_%", "paper_ref"],
              ([r["setting"], r["method"], r["seeds"], *values(r), r["paper"], r["paper_ref"]] for r in rows))
    plot_curves(client, groups, "domain_avg_acc" if domains else GLOBAL_ACC, files[1], panels=panels,
                series=list(LORA_FAIR_METHODS), ylabel="accuracy (%)",
                title=titled("test accuracy over rounds", records))
    return lora_fair_table(rows, domains, data_names(records)), files
