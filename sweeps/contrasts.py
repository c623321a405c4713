"""The contrasts a study declares, computed from a launch's seed runs: which differences are resolved.

A study file's `contrasts:` (docs/studies.md) lists comparisons between groups of design cells:

    contrasts:
      - name: pretrained minus from scratch
        a: {model: fm_lora}               # the cells on the left (a level, or a list of levels)
        b: {model: textcnn}               # the cells on the right
        metrics: [gap, worst_client_acc]
        within: [alpha]                   # compare an a-cell with a b-cell where these factors agree
                                          # (default: every factor that `a` and `b` do not name)
      - name: skew interaction
        a: {model: fm_lora}
        b: {model: textcnn}
        metrics: [gap]
        interaction: alpha                # (a - b) at alpha's smallest level minus at its largest

`plan` turns the declarations into concrete pairs of cells, in the study's own vocabulary (factor
labels, as the study file names them), when the launch starts; the launch records that plan on its
parent run (tag `contrasts`) and the report computes it (`contrast_rows`) on the cells' names. Every
a-cell meets every b-cell that agrees with it on `within`; each such pair and metric is one
contrast: a − b of the seed runs' final-round values, paired by seed where the two cells share their
setting (the same data, partition and cohort fields, so seed s gave both the same clients), else
Welch's t (sweeps/stats.py). An interaction contrast is paired by seed throughout: per seed,
(a − b at the smallest level) − (a − b at the largest). The family for Holm's correction is every
contrast of the report; the verdict reads the Holm-adjusted p.
"""
from __future__ import annotations

import math
from typing import Any

from sweeps.stats import LEVEL, Contrast, holm, paired_contrast, verdict, welch_contrast

# the config fields that decide which samples each client holds and when it takes part: cells that agree
# on them (and run the same seeds) pair seed by seed
SETTING_PREFIXES = ("data.", "partition.")
SETTING_KEYS = ("clients_per_round", "eval.protocol", "eval.max_samples_per_client")
# data fields that shape each sample's tokens, not which samples a client holds
NOT_SETTING = ("data.max_len", "data.vocab_size")


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def same_level(value: Any, wanted: Any) -> bool:
    """A cell tag (a string) against a level as the study file wrote it (0.1, 5, 'fm_lora')."""
    if str(value) == str(wanted):
        return True
    a, b = _num(value), _num(wanted)
    return a is not None and b is not None and a == b


def matches(factors: dict[str, Any], cond: dict[str, Any]) -> bool:
    def one(value, wanted) -> bool:
        if isinstance(wanted, dict) and set(wanted) == {"not"}:
            return not one(value, wanted["not"])
        options = wanted if isinstance(wanted, list) else [wanted]
        return any(same_level(value, w) for w in options)
    return all(k in factors and one(factors[k], v) for k, v in cond.items())


def plan(specs: list[dict[str, Any]], cells: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The declared contrasts as concrete comparisons between cells, from each cell's (name, factor
    labels): what the launch records on its parent run (tag `contrasts`) and the report computes.
    Each entry: {contrast, metrics, interaction ('' or 'alpha 0.1 - alpha 5'), pairs: [[a, b], ...]
    or, for an interaction, [[a_lo, b_lo, a_hi, b_hi], ...]}."""
    out = []
    for spec in specs:
        a_side = [(n, f) for n, f in cells if matches(f, spec["a"])]
        b_side = [(n, f) for n, f in cells if matches(f, spec["b"])]
        named = set(spec["a"]) | set(spec["b"])
        factors = list(dict.fromkeys(k for _, f in cells for k in f))
        within = spec.get("within")
        within = [k for k in factors if k not in named] if within is None else list(within)
        entry = {"contrast": spec.get("name") or _describe(spec), "metrics": list(spec["metrics"]),
                 "interaction": "", "pairs": []}
        factor = spec.get("interaction")
        if factor:
            levels = list(dict.fromkeys(f[factor] for _, f in cells if factor in f))
            if all(_num(v) is not None for v in levels):
                levels = sorted(levels, key=_num)
            if len(levels) < 2:
                continue
            lo, hi = levels[0], levels[-1]
            entry["interaction"] = f"{factor} {lo} - {factor} {hi}"
            keys = [k for k in within if k != factor]
            for na, fa in a_side:
                for nb, fb in b_side:
                    if not (same_level(fa.get(factor), lo) and same_level(fb.get(factor), lo) and _agree(fa, fb, keys)):
                        continue
                    ah, bh = _partner(a_side, fa, factor, hi), _partner(b_side, fb, factor, hi)
                    if ah and bh:
                        entry["pairs"].append([na, nb, ah, bh])
        else:
            entry["pairs"] = [[na, nb] for na, fa in a_side for nb, fb in b_side if na != nb and _agree(fa, fb, within)]
        if entry["pairs"]:
            out.append(entry)
    return out


def _partner(side: list[tuple[str, dict]], labels: dict, factor: str, level: Any) -> str | None:
    """The cell of `side` whose labels are `labels` but `level` of `factor`."""
    others = [k for k in labels if k != factor]
    return next((n for n, f in side if same_level(f.get(factor), level) and _agree(f, labels, others)), None)


def _agree(f1: dict, f2: dict, keys) -> bool:
    return all(same_level(f1.get(k), f2.get(k)) for k in keys)


def _describe(spec: dict[str, Any]) -> str:
    def side(cond):
        return ", ".join(f"{k} {'/'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in cond.items())
    return f"{side(spec['a'])} minus {side(spec['b'])}"


# --- computing them from a launch's seed runs -------------------------------------------------------
def cells_of(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """cell name -> {values by seed (final metrics), setting}: from the seed runs' records."""
    from sweeps.report_common import cell_key

    cells: dict[str, dict[str, Any]] = {}
    for r in records:
        c = cells.setdefault(cell_key(r), {"by_seed": {}, "setting": None, "factors": r.get("cell", {})})
        c["by_seed"][r["seed"]] = r["metrics"]  # a seed re-run after --resume: the last one counts
        if c["setting"] is None:
            c["setting"] = tuple(sorted((k, v) for k, v in r.get("params", {}).items()
                                        if (k.startswith(SETTING_PREFIXES) or k in SETTING_KEYS)
                                        and k not in NOT_SETTING))
    return cells


def _values(cell: dict[str, Any], metric: str) -> dict[int, float]:
    # rounded far below any meaningful difference: a gap of mean - worst that is 0 up to float error
    # (-1e-17) must count as 0, or a constant would be tested on its rounding noise
    return {s: round(m[metric], 12) + 0.0 for s, m in cell["by_seed"].items()
            if m.get(metric) is not None and m[metric] == m[metric]}


def _diff(a: dict, b: dict, metric: str) -> dict[int, float]:
    va, vb = _values(a, metric), _values(b, metric)
    return {s: va[s] - vb[s] for s in va if s in vb}


def compare(a: dict, b: dict, metric: str) -> Contrast:
    """a − b: paired by seed where the cells share their setting and at least two seeds, else Welch's t."""
    paired = a["setting"] == b["setting"] and len(set(a["by_seed"]) & set(b["by_seed"])) >= 2
    va, vb = _values(a, metric), _values(b, metric)
    return paired_contrast(va, vb) if paired else welch_contrast(list(va.values()), list(vb.values()))


def contrast_rows(records: list[dict[str, Any]], planned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every planned comparison whose cells have seed runs, with Holm-adjusted p and a verdict each."""
    cells = cells_of(records)
    rows: list[dict[str, Any]] = []
    for entry in planned:
        for names in entry["pairs"]:
            if not all(n in cells for n in names):
                continue  # a cell without seed runs (it failed, or the launch did not get to it)
            c = [cells[n] for n in names]
            for metric in entry["metrics"]:
                if entry["interaction"]:
                    result = paired_contrast(_diff(c[0], c[1], metric), _diff(c[2], c[3], metric))
                    what = f"({names[0]} - {names[1]}) - ({names[2]} - {names[3]})"
                else:
                    result, what = compare(c[0], c[1], metric), f"{names[0]} - {names[1]}"
                rows.append({"contrast": entry["contrast"], "interaction": entry["interaction"], "metric": metric,
                             "a": names[0], "b": names[1], "cells": list(names), "what": what, "result": result,
                             "a_factors": c[0]["factors"], "b_factors": c[1]["factors"]})
    for r in rows:  # a metric constant and equal in every cell (a gap that is 0 by construction) tests nothing
        if len({v for n in r["cells"] for v in _values(cells[n], r["metric"]).values()}) == 1:
            c = r["result"]
            r["result"] = Contrast(c.estimate, c.lo, c.hi, math.nan, c.n, c.paired, c.sd, c.sd_a, c.sd_b, c.n_a, c.n_b)
            r["degenerate"] = True
    adjusted = holm([r["result"].p for r in rows])
    family = sum(1 for q in adjusted if q == q)
    for r, p in zip(rows, adjusted):
        r["p_holm"] = p
        r["verdict"] = (f"no test: {r['metric']} is the same constant in every cell compared"
                        if r.get("degenerate") else verdict(r["result"], p, family))
    return rows


# --- output ----------------------------------------------------------------------------------------
def _pp(x: float, sign: bool = True) -> str:
    return "-" if x != x else (f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}")


def _p(x: float) -> str:
    return "-" if x != x else ("<0.001" if x < 0.001 else f"{x:.3f}")


def format_contrasts(rows: list[dict[str, Any]]) -> str:
    """The contrasts table: estimate, 95% CI, p, Holm's p and the verdict of each, with its note."""
    if not rows:
        return ""
    w = max(len("contrast"), *(len(r["what"]) for r in rows))
    mw = max(len("metric"), *(len(r["metric"]) for r in rows))
    head = (f"{'contrast':<{w}}  {'metric':<{mw}}  {'n':>2}  {'pairing':<7}  {'a - b':>6}  {'95% CI':>17}  "
            f"{'p':>6}  {'p Holm':>6}  verdict")
    family = sum(1 for r in rows if r["p_holm"] == r["p_holm"])
    lines = [f"Contrasts ({family} tested, percentage points)", head, "-" * len(head)]
    current = None
    for r in rows:
        if r["contrast"] != current:
            current = r["contrast"]
            lines.append(f"{current}" + (f" (interaction: {r['interaction']})" if r["interaction"] else "") + ":")
        c = r["result"]
        ci = "-" if c.lo != c.lo else f"[{_pp(max(-1.0, c.lo))}, {_pp(min(1.0, c.hi))}]"  # shown clipped to +-100
        lines.append(f"{r['what']:<{w}}  {r['metric']:<{mw}}  {c.n:>2}  {'paired' if c.paired else 'welch':<7}  "
                     f"{_pp(c.estimate):>6}  {ci:>17}  {_p(c.p):>6}  {_p(r['p_holm']):>6}  {r['verdict']}")
    what = (f"p Holm is adjusted over the {family} tested contrasts (Holm's step-down), and the verdict reads it: "
            f"resolved where p Holm < {1 - LEVEL:.2f}; otherwise, in brackets, the seeds the observed difference and "
            f"spread would need at the Bonferroni level {1 - LEVEL:.2f}/{family}, an upper bound on what Holm needs. "
            f"The interval is per contrast, not adjusted (shown clipped to +-100), so it can exclude 0 where Holm's "
            f"correction still does not resolve the contrast; the verdict then says so"
            if family else "no contrast could be tested: each needs two seeds in both cells and a metric that varies")
    lines.append(
        f"(a - b of the seed runs' final-round values, percentage points; n seeds per cell. paired: the same seeds "
        f"give both cells the same partition and cohorts, so the mean and {LEVEL:.0%} t interval are of the "
        f"per-seed differences and p is the paired t-test's; welch: independent samples, Welch's t. p is two-sided; "
        f"{what}. 'no test': the metric is one constant in every cell compared, as a gap that is 0 by construction; "
        f"docs/statistics.md.)")
    return "\n".join(lines)


def contrasts_csv_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    header = ["contrast", "a", "b", "interaction", "metric", "n", "pairing", "estimate_pp", "ci_lo_pp", "ci_hi_pp",
              "p", "p_holm", "verdict"]
    out = []
    for r in rows:
        c = r["result"]
        out.append([r["contrast"], r["a"], r["b"], r["interaction"], r["metric"], c.n,
                    "paired" if c.paired else "welch", *(round(100 * v, 4) if v == v else "" for v in (c.estimate, c.lo, c.hi)),
                    "" if c.p != c.p else c.p, "" if r["p_holm"] != r["p_holm"] else r["p_holm"], r["verdict"]])
    return header, out
