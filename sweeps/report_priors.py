"""Reports of the foundation-model-prior studies, from a launch's seeded re-runs in MLflow.

fed_lpfm: per dataset and student, one row per method (Fed-LPFM once per teacher and teacher
ablation) and the teachers' zero-shot rows; per partition level (Dirichlet alpha, class split with k
classes per client) the balanced test accuracy and the worst-class accuracy (balancedness), mean ±
sd [95% interval] over n seeds; plots of both against the partition. Fed-LPFM's tables were not available
(docs/methods.md, section "Fed-LPFM"), so no paper numbers are printed beside them.
fedpurel: a table shaped like FedPuReL's (one block per dataset, imbalance factor and beta; rows
zero-shot, FedAvg fine-tuning, FedPuReL and its plain-KL ablation; columns All, Many, Medium, Few
and balancedness of the global model on the balanced test set and of the personalized model on the
clients' local test splits), the paper's CIFAR-100-LT numbers beside it where the launch ran a
CIFAR-100, and the global model's balancedness over rounds against the zero-shot line.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from fedcore.metrics import BALANCEDNESS, GLOBAL_ACC, MEAN_CLIENT_ACC
from sweeps.report_common import (INTERVAL_NOTE, PM_WIDTH, Line, data_names, data_note, is_paper_data, methods_ref, no_reference,
                                  half_width, pct, pct_header, plot_curves, plot_lines, pm, pm_head, stat, titled, write_csv,
                                  zero_shot_records)

LPFM_METHODS = ("fedavg", "fedprox", "fml", "fed_lpfm")  # the order the table lists them in

# FedPuReL (Hou et al., CVPR 2026) on CIFAR-100-LT, IF 100, beta 1, CLIP ViT-B/16, prompt variant (percent)
FEDPUREL_NAME = "FedPuReL (Hou et al., CVPR 2026)"
FEDPUREL_PAPER = (f"paper ({FEDPUREL_NAME}, CIFAR-100-LT, IF 100, beta 1, CLIP ViT-B/16, prompt; "
                  f"{methods_ref('FedPuReL')}): zero-shot GM 64.82; FedPuReL GM 69.77 / PM 73.37, balancedness "
                  "GM 27.87 / PM 30.02; with plain KL GM 67.92 / PM 71.62, balancedness 25.03 / 27.84")
COLUMNS = ("all", "many", "medium", "few", "balancedness")
GM = (GLOBAL_ACC, "many_acc", "medium_acc", "few_acc", BALANCEDNESS)
PM = (MEAN_CLIENT_ACC, "local_many_acc", "local_medium_acc", "local_few_acc", "local_balancedness")


def _short(name: str) -> str:
    return name.split(":", 1)[-1]


# --- fed_lpfm --------------------------------------------------------------------------------------
def _lpfm_label(r: dict[str, Any]) -> str:
    """The method as the table names it: Fed-LPFM with its teacher (and the teacher ablation, the loss form)."""
    if r["aggregation"] != "fed_lpfm":
        return r["aggregation"]
    cell = r["cell"]
    variant = cell.get("teacher_variant", "zero_shot")
    if variant == "per_client":
        names = [_short(n) for n in str(cell.get("per_client", "")).split("|") if n]
        teacher = "per-client " + "/".join(names)
        if len(teacher) > 30:  # four CLIP names do not fit a table column: say how many
            teacher = f"per-client, {len(names)} teachers"
    else:
        teacher = _short(cell.get("teacher", "?")) + (", fine-tuned" if variant == "finetuned" else "")
    return f"fed_lpfm ({teacher}{', additive' if cell.get('form') == 'additive' else ''})"


def _level(r: dict[str, Any]) -> tuple[tuple, str]:
    """(sort key, column label) of a record's partition: Dirichlet alphas ascending, then class splits."""
    if r["cell"].get("partition") == "classes":
        k = int(float(r["cell"].get("classes_per_client", "nan")))
        return (1, k), f"classes {k}"
    return (0, r["alpha"]), f"alpha {r['alpha']:g}"


def fed_lpfm_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, student, method label) and per zero-shot teacher, with (acc, balancedness) per
    partition level ('alpha 0.1', 'classes 2', ...)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    by_teacher: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        block, level = (r["cell"].get("dataset", "?"), r["model"]), _level(r)
        groups[(*block, _lpfm_label(r), level)].append(r)
        zero = _short(r["cell"].get("zero_shot", r["cell"].get("teacher", "?")))
        by_teacher[(*block, f"zero-shot {zero}", level)].append(r)
    teachers = {k: zs for k, rs in by_teacher.items() if (zs := zero_shot_records(rs))}
    order = {m: i for i, m in enumerate(LPFM_METHODS)}
    rows: dict[tuple, dict[str, Any]] = {}
    for (ds, student, label, (key, name)), rs in list(teachers.items()) + list(groups.items()):
        row = rows.setdefault((ds, student, label), {"dataset": ds, "student": student, "method": label,
                                                    "zero_shot": label.startswith("zero-shot"), "levels": {}})
        row["levels"][name] = {"key": key, "acc": stat(rs, "global_acc"), "balancedness": stat(rs, "balancedness"),
                               "seeds": len(rs)}
    return sorted(rows.values(), key=lambda r: (r["dataset"], r["student"], not r["zero_shot"],
                                                order.get(r["method"].split(" ")[0], 99), r["method"]))


def _levels(rows: list[dict[str, Any]]) -> list[str]:
    keys = {name: v["key"] for r in rows for name, v in r["levels"].items()}
    return sorted(keys, key=keys.get)


def fed_lpfm_table(rows: list[dict[str, Any]], data: list[str] = ()) -> str:
    levels = _levels(rows)
    lines = []
    for block in dict.fromkeys((r["dataset"], r["student"]) for r in rows):
        head = f"{'method':<40}" + "".join(f"  {'n':>2}  {pm_head(f'{lv}: acc')}  {pm_head('balancedness')}"
                                           for lv in levels)
        lines += [f"{block[0]}, student {_short(block[1])}", head, "-" * len(head)]
        for r in (r for r in rows if (r["dataset"], r["student"]) == block):
            cells = "".join(f"  {r['levels'][lv]['acc'].n:>2}  {pm(r['levels'][lv]['acc'])}  "
                            f"{pm(r['levels'][lv]['balancedness'])}"
                            if lv in r["levels"] else f"  {'-':>2}  {pm_head('-')}  {pm_head('-')}" for lv in levels)
            lines.append(f"{r['method']:<40}{cells}")
        lines.append("")
    note = (f"(percent; global model on the balanced test set, final round, {INTERVAL_NOTE}; balancedness: "
            "the worst class's accuracy. Columns: Dirichlet label skew at alpha, and the class split with k classes "
            "per client (partition.kind classes). Zero-shot rows: the frozen teacher itself; a fine-tuned or "
            "per-client Fed-LPFM run keeps the first teacher's zero-shot row." + data_note(data))
    if is_paper_data(data, "fed_lpfm") is False:
        lines += [note + ")", no_reference(data, "Fed-LPFM (Wu et al., FL@FM-NeurIPS'23)", "CIFAR-10")]
    else:
        lines.append(note + " Fed-LPFM's own tables (Wu et al., FL@FM-NeurIPS'23) were not available "
                     f"({methods_ref('Fed-LPFM')}): compare the methods with each other and the teacher.)")
    return "\n".join(lines)


def _plot_vs_partition(rows: list[dict[str, Any]], path: Path, title: str | None = None) -> None:
    levels = _levels(rows)
    panels = [[Line(f"{r['method']} ({r['dataset']}, {_short(r['student'])})",
                    [x for x, lv in enumerate(levels) if lv in r["levels"]],
                    [100 * r["levels"][lv][key][0] for lv in levels if lv in r["levels"]],
                    [half_width(r["levels"][lv][key]) for lv in levels if lv in r["levels"]],
                    color=f"C{i % 10}", style="--" if r["zero_shot"] else "-",
                    n=[r["levels"][lv][key].n for lv in levels if lv in r["levels"]]) for i, r in enumerate(rows)]
              for key in ("acc", "balancedness")]
    plot_lines(panels, path, xlabel="partition (smaller alpha, fewer classes: more skewed)", ylabels=[],
               titles=["balanced test accuracy (%)", "balancedness: worst-class accuracy (%)"], suptitle=title,
               xticklabels=levels, legend_size=6)


def fed_lpfm_report(client, parent, records, out: Path, contrasts=()) -> tuple[str, list[Path]]:
    rows = fed_lpfm_rows(records)
    files = [out / "table.csv", out / "accuracy_vs_partition.png"]
    write_csv(files[0], ["dataset", "student", "method", "partition", "seeds", *pct_header("acc"),
                         *pct_header("balancedness")],
              ([r["dataset"], r["student"], r["method"], lv, v["seeds"], *pct(v["acc"]), *pct(v["balancedness"])]
               for r in rows for lv in _levels([r]) for v in [r["levels"][lv]]))
    names = data_names(records)
    _plot_vs_partition(rows, files[1], titled("final round against the partition", records))
    return fed_lpfm_table(rows, names), files


# --- fedpurel --------------------------------------------------------------------------------------
def _block(r: dict[str, Any]) -> str:
    return f"{r['cell'].get('dataset', '?')}-LT, IF {float(r['cell'].get('imbalance', 'nan')):g}, beta {r['alpha']:g}"


def _purel_method(r: dict[str, Any]) -> str:
    if r["aggregation"] == "fedpurel":
        return "FedPuReL (KL)" if r["cell"].get("align") == "kl" else "FedPuReL"
    return "FedAvg FT"


PUREL_ORDER = ("Zero-shot", "FedAvg FT", "FedPuReL", "FedPuReL (KL)")


def fedpurel_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(_block(r), _purel_method(r))].append(r)
    for block in {b for b, _ in groups}:  # every run carries the zero-shot row; each seed counts once
        zs = zero_shot_records([r for r in records if _block(r) == block])
        if zs:
            groups[(block, "Zero-shot")] = zs
    rows = []
    for (block, method), rs in groups.items():
        row = {"setting": block, "method": method, "seeds": len(rs)}
        row.update({f"gm_{c}": stat(rs, key) for c, key in zip(COLUMNS, GM)})
        row.update({f"pm_{c}": stat(rs, key) for c, key in zip(COLUMNS, PM)})
        rows.append(row)
    return sorted(rows, key=lambda r: (r["setting"], PUREL_ORDER.index(r["method"])))


def fedpurel_table(rows: list[dict[str, Any]], data: list[str] = ()) -> str:
    width = {c: PM_WIDTH for c in COLUMNS}
    head = (f"{'method':<15}{'seeds':>5}  " + "  ".join(f"{'GM ' + c:>{width[c]}}" for c in COLUMNS) + "  |  "
            + "  ".join(f"{'PM ' + c:>{width[c]}}" for c in COLUMNS))
    lines = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        lines += [setting, head, "-" * len(head)]
        for r in (r for r in rows if r["setting"] == setting):
            gm = "  ".join(f"{pm(r['gm_' + c]):>{width[c]}}" for c in COLUMNS)
            pm_ = "  ".join(f"{pm(r['pm_' + c]):>{width[c]}}" for c in COLUMNS)
            seeds = "" if r["method"] == "Zero-shot" else r["seeds"]
            lines.append(f"{r['method']:<15}{seeds:>5}  {gm}  |  {pm_}")
        lines.append("")
    lines.append(f"(percent; final round, {INTERVAL_NOTE}. GM: the global model on the balanced test set; PM: "
                 "each client's personalized model (global + private branch; FedAvg FT and zero-shot have none, "
                 "so the global or zero-shot model) on its own local test split, All the unweighted mean over "
                 "clients and Many/Medium/Few/balancedness over the clients' test samples pooled. Many/Medium/Few "
                 "by training count per class (eval.many_min, eval.few_max); balancedness: worst-class accuracy."
                 + data_note(data) + ")")
    lines.append(no_reference(data, FEDPUREL_NAME, "CIFAR-100-LT") if is_paper_data(data, "fedpurel") is False
                 else FEDPUREL_PAPER)
    return "\n".join(lines)


def fedpurel_report(client, parent, records, out: Path, contrasts=()) -> tuple[str, list[Path]]:
    rows = fedpurel_rows(records)
    files = [out / "table.csv", out / "balancedness_over_rounds.png", out / "few_over_rounds.png"]
    cols = [f"{p}_{c}" for p in ("gm", "pm") for c in COLUMNS]
    write_csv(files[0], ["setting", "method", "seeds", *[h for c in cols for h in pct_header(c)]],
              ([r["setting"], r["method"], r["seeds"], *[v for c in cols for v in pct(r[c])]] for r in rows))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(_block(r), _purel_method(r))].append(r)
    panels = sorted({p for p, _ in groups})
    zero = {p: zero_shot_records([r for (q, _), rs in groups.items() if q == p for r in rs]) for p in panels}
    methods = [m for m in PUREL_ORDER[1:] if any(m == k[1] for k in groups)]
    for key, path, ylabel, title in (
            ("balancedness", files[1], "worst-class accuracy (%)",
             "global model's balancedness over rounds (dashed: zero-shot)"),
            ("few_acc", files[2], "few-class accuracy (%)",
             "global model's accuracy on the Few classes over rounds (dashed: zero-shot)")):
        plot_curves(client, groups, key, path, panels=panels, series=methods, ylabel=ylabel,
                    title=titled(title, records), baselines={p: stat(zs, key)[0] for p, zs in zero.items()})
    return fedpurel_table(rows, data_names(records)), files
