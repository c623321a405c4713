"""Reports of the foundation-model-prior studies, from a launch's seeded re-runs in MLflow.

fed_lpfm: per dataset and student, one row per method (Fed-LPFM once per teacher and teacher
ablation) and the teachers' zero-shot rows; per partition level (Dirichlet alpha, class split with k
classes per client) the balanced test accuracy and the worst-class accuracy (balancedness), mean ±
sd over seeds; plots of both against the partition. Fed-LPFM's tables were not available
(METHODS.md 2.3), so no paper numbers are printed beside them.
fedpurel: a table shaped like FedPuReL's (one block per dataset, imbalance factor and beta; rows
zero-shot, FedAvg fine-tuning, FedPuReL and its plain-KL ablation; columns All, Many, Medium, Few
and balancedness of the global model on the balanced test set and of the personalized model on the
clients' local test splits), the paper's CIFAR-100-LT numbers beside it, and the global model's
balancedness over rounds against the zero-shot line.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from search_spaces.fed_lpfm import METHODS as LPFM_METHODS
from sweeps.report_lora import _curves_plot, _mean_sd, _pm, _write_csv

# METHODS.md 3.8: CIFAR-100-LT, IF 100, beta 1, CLIP ViT-B/16, prompt variant (percent)
FEDPUREL_PAPER = ("paper (CIFAR-100-LT, IF 100, beta 1, CLIP ViT-B/16, prompt; METHODS.md 3.8): zero-shot GM 64.82; "
                  "FedPuReL GM 69.77 / PM 73.37, balancedness GM 27.87 / PM 30.02; with plain KL GM 67.92 / PM 71.62, "
                  "balancedness 25.03 / 27.84")
GM = ("global_acc", "many_acc", "medium_acc", "few_acc", "balancedness")
PM = ("mean_client_acc", "local_many_acc", "local_medium_acc", "local_few_acc", "local_balancedness")
ZERO_SHOT_GM = ("teacher_acc", "teacher_many_acc", "teacher_medium_acc", "teacher_few_acc", "teacher_balancedness")
ZERO_SHOT_PM = ("teacher_mean_client_acc", "teacher_local_many_acc", "teacher_local_medium_acc",
                "teacher_local_few_acc", "teacher_local_balancedness")


def _short(name: str) -> str:
    return name.split(":", 1)[-1]


def _stat(records: list[dict], key: str) -> tuple[float, float]:
    return _mean_sd([r["metrics"].get(key, math.nan) for r in records])


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
    """One row per (dataset, student, method label) and per zero-shot teacher, with (acc, bal) per partition
    level ('alpha 0.1', 'classes 2', ...)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    teachers: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in records:
        block, level = (r["cell"].get("dataset", "?"), r["model"]), _level(r)
        groups[(*block, _lpfm_label(r), level)].append(r)
        # the teacher's row once per seed (a seed fixes the partition; every cell of it scores the same)
        teachers[(*block, f"zero-shot {_short(r['cell'].get('zero_shot', r['cell'].get('teacher', '?')))}",
                  level)].setdefault(r["seed"], r)
    teachers = {k: list(v.values()) for k, v in teachers.items()}
    order = {m: i for i, m in enumerate(LPFM_METHODS)}
    rows: dict[tuple, dict[str, Any]] = {}
    for (ds, student, label, (key, name)), rs in list(teachers.items()) + list(groups.items()):
        zero = label.startswith("zero-shot")
        row = rows.setdefault((ds, student, label), {"dataset": ds, "student": student, "method": label,
                                                    "zero_shot": zero, "levels": {}})
        acc, bal = ("teacher_acc", "teacher_balancedness") if zero else ("global_acc", "balancedness")
        row["levels"][name] = {"key": key, "acc": _stat(rs, acc), "bal": _stat(rs, bal), "seeds": len(rs)}
    return sorted(rows.values(), key=lambda r: (r["dataset"], r["student"], not r["zero_shot"],
                                                order.get(r["method"].split(" ")[0], 99), r["method"]))


def _levels(rows: list[dict[str, Any]]) -> list[str]:
    keys = {name: v["key"] for r in rows for name, v in r["levels"].items()}
    return sorted(keys, key=keys.get)


def fed_lpfm_table(rows: list[dict[str, Any]]) -> str:
    levels = _levels(rows)
    lines = []
    for block in dict.fromkeys((r["dataset"], r["student"]) for r in rows):
        head = f"{'method':<40}" + "".join(f"{f'{lv}: acc':>17}{'bal':>14}" for lv in levels)
        lines += [f"{block[0]}, student {_short(block[1])}", head, "-" * len(head)]
        for r in (r for r in rows if (r["dataset"], r["student"]) == block):
            cells = "".join(f"{_pm(r['levels'][lv]['acc']):>17}{_pm(r['levels'][lv]['bal']):>14}" if lv in r["levels"]
                            else f"{'-':>17}{'-':>14}" for lv in levels)
            lines.append(f"{r['method']:<40}{cells}")
        lines.append("")
    lines.append("(percent; global model on the balanced test set, final round, mean ± sd over seeds; bal = "
                 "balancedness, the worst class's accuracy. Columns: Dirichlet label skew at alpha, and the class "
                 "split with k classes per client (partition.kind classes). Zero-shot rows: the frozen teacher "
                 "itself; a fine-tuned or per-client Fed-LPFM run keeps the first teacher's zero-shot row. Fed-LPFM's "
                 "own tables were not available (METHODS.md 2.3): compare the methods with each other and the teacher.)")
    return "\n".join(lines)


def _plot_vs_partition(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    levels = _levels(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, r in enumerate(rows):
        at = [x for x, lv in enumerate(levels) if lv in r["levels"]]
        for ax, key in zip(axes, ("acc", "bal")):
            ax.errorbar(at, [100 * r["levels"][levels[x]][key][0] for x in at],
                        yerr=[100 * r["levels"][levels[x]][key][1] for x in at], marker="o", capsize=3,
                        linestyle="--" if r["zero_shot"] else "-", color=f"C{i % 10}",
                        label=f"{r['method']} ({r['dataset']}, {_short(r['student'])})")
    for ax, title in zip(axes, ("balanced test accuracy (%)", "balancedness: worst-class accuracy (%)")):
        ax.set_xticks(range(len(levels)), levels, fontsize=7)
        ax.set_xlabel("partition (smaller alpha, fewer classes: more skewed)")
        ax.set_title(title, fontsize=9)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fed_lpfm_report(client, parent, records, out: Path) -> tuple[str, list[Path]]:
    rows = fed_lpfm_rows(records)
    files = [out / "table.csv", out / "accuracy_vs_partition.png"]
    with files[0].open("w") as f:
        f.write("dataset,student,method,partition,seeds,acc,acc_sd,balancedness,balancedness_sd\n")
        for r in rows:
            for lv in _levels([r]):
                v = r["levels"][lv]
                f.write(f"{r['dataset']},{r['student']},{r['method']},{lv},{v['seeds']},{v['acc'][0]},{v['acc'][1]},"
                        f"{v['bal'][0]},{v['bal'][1]}\n")
    _plot_vs_partition(rows, files[1])
    return fed_lpfm_table(rows), files


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
    zero: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in records:
        groups[(_block(r), _purel_method(r))].append(r)
        zero[_block(r)].setdefault(r["seed"], r)  # every run carries the zero-shot row; count each seed once
    for block, by_seed in zero.items():
        groups[(block, "Zero-shot")] = list(by_seed.values())
    rows = []
    for (block, method), rs in groups.items():
        gm, pm = (ZERO_SHOT_GM, ZERO_SHOT_PM) if method == "Zero-shot" else (GM, PM)
        row = {"setting": block, "method": method, "seeds": len(rs)}
        row.update({f"gm_{k}": _stat(rs, key) for k, key in zip(("all", "many", "medium", "few", "bal"), gm)})
        row.update({f"pm_{k}": _stat(rs, key) for k, key in zip(("all", "many", "medium", "few", "bal"), pm)})
        rows.append(row)
    return sorted(rows, key=lambda r: (r["setting"], PUREL_ORDER.index(r["method"])))


def fedpurel_table(rows: list[dict[str, Any]]) -> str:
    cols = ("all", "many", "medium", "few", "bal")
    head = (f"{'method':<15}{'seeds':>5}  " + "  ".join(f"{'GM ' + c:>11}" for c in cols) + "  |  "
            + "  ".join(f"{'PM ' + c:>11}" for c in cols))
    lines = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        lines += [setting, head, "-" * len(head)]
        for r in (r for r in rows if r["setting"] == setting):
            gm = "  ".join(f"{_pm(r['gm_' + c]):>11}" for c in cols)
            pm = "  ".join(f"{_pm(r['pm_' + c]):>11}" for c in cols)
            seeds = "" if r["method"] == "Zero-shot" else r["seeds"]
            lines.append(f"{r['method']:<15}{seeds:>5}  {gm}  |  {pm}")
        lines.append("")
    lines.append("(percent; final round, mean ± sd over seeds. GM: the global model on the balanced test set; PM: "
                 "each client's personalized model (global + private branch; FedAvg FT and zero-shot have none, "
                 "so the global or zero-shot model) on its own local test split, All the unweighted mean over "
                 "clients and Many/Medium/Few/bal over the clients' test samples pooled. Many/Medium/Few by "
                 "training count per class (eval.many_min, eval.few_max); bal = balancedness, worst-class accuracy.)")
    lines.append(FEDPUREL_PAPER)
    return "\n".join(lines)


def fedpurel_report(client, parent, records, out: Path) -> tuple[str, list[Path]]:
    rows = fedpurel_rows(records)
    files = [out / "table.csv", out / "balancedness_over_rounds.png", out / "few_over_rounds.png"]
    cols = [f"{p}_{c}" for p in ("gm", "pm") for c in ("all", "many", "medium", "few", "bal")]
    _write_csv(files[0], ["setting", "method", "seeds"], rows, cols)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(_block(r), _purel_method(r))].append(r)
    panels = sorted({p for p, _ in groups})
    zero = {p: statistics.fmean(r["metrics"]["teacher_balancedness"] for (q, _), rs in groups.items() if q == p
                                for r in rs) for p in panels}
    methods = tuple(m for m in PUREL_ORDER[1:] if any(m == k[1] for k in groups))
    _curves_plot(client, groups, panels, "balancedness", "worst-class accuracy (%)",
                 "global model's balancedness over rounds (mean over seeds; dashed: zero-shot)", methods, files[1],
                 baselines=zero)
    zero_few = {p: statistics.fmean(r["metrics"].get("teacher_few_acc", math.nan) for (q, _), rs in groups.items()
                                    if q == p for r in rs) for p in panels}
    _curves_plot(client, groups, panels, "few_acc", "few-class accuracy (%)",
                 "global model's accuracy on the Few classes over rounds (dashed: zero-shot)", methods, files[2],
                 baselines=zero_few)
    return fedpurel_table(rows), files
