"""The statistics every report prints: intervals over seeds, contrasts between cells, Holm's correction.

Every number a report shows is over a cell's seed runs (seeds disjoint from its tuning trials'), so
the unit of replication is the seed: n is the number of seed runs, never of clients or rounds.

- `t_interval`: mean, sample sd and the two-sided Student-t confidence interval of the mean
  (mean ± t(1 - (1 - level)/2, n - 1) · sd / √n). With one value the sd and the interval are
  undefined (NaN); with zero spread the interval is the point.
- `paired_contrast`: a − b over the seeds both cells ran, as the mean of the per-seed differences,
  its t interval and the two-sided one-sample t-test's p-value. Used where the design pairs: a seed
  fixes the partition and the cohort schedule, so in two cells of one setting seed s is the same
  federation trained two ways, and the difference removes the partition's share of the spread.
- `welch_contrast`: a − b of two independent samples (Welch's unequal-variance t, Welch–Satterthwaite
  degrees of freedom), where the cells do not share their partitions.
- `holm`: Holm's step-down adjustment of a family's p-values (the family: one report's contrasts).
- `verdict`: 'resolved' where the Holm-adjusted p is below `level`'s alpha (its unadjusted interval
  then excludes 0); else 'not resolved at n seeds', or 'not resolved after Holm's correction' where
  only the unadjusted interval excludes 0, with the seeds the observed difference and spread would
  need (`seeds_needed`).

Zero spread with n ≥ 2 is taken at its word: a constant non-zero difference has p = 0, a constant zero
difference p = 1 (scipy's t-test returns NaN there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as _st

LEVEL = 0.95
MAX_SEEDS = 1000  # seeds_needed gives up beyond this: "more than 1000"


def _clean(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and v == v]


@dataclass(frozen=True)
class Interval:
    mean: float
    sd: float  # sample sd (ddof 1); NaN for n < 2
    n: int
    lo: float  # the t interval of the mean; NaN for n < 2
    hi: float


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean, sd and the Student-t `level` interval of the mean of the non-NaN values."""
    v = _clean(values)
    n = len(v)
    if n == 0:
        return Interval(math.nan, math.nan, 0, math.nan, math.nan)
    mean = math.fsum(v) / n
    if n == 1:
        return Interval(mean, math.nan, 1, math.nan, math.nan)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1))
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, sd, n, mean - half, mean + half)


@dataclass(frozen=True)
class Contrast:
    estimate: float  # mean of a minus mean of b (paired: mean of the per-seed differences)
    lo: float
    hi: float
    p: float  # two-sided, unadjusted; NaN where it cannot be computed (fewer than 2 values)
    n: int  # paired: seeds in both cells; welch: the smaller arm's n
    paired: bool
    sd: float  # paired: sd of the differences; welch: NaN (see sd_a, sd_b)
    sd_a: float = math.nan
    sd_b: float = math.nan
    n_a: int = 0
    n_b: int = 0


def _p_from_t(t: float, df: float) -> float:
    return float(2 * _st.t.sf(abs(t), df))


def paired_contrast(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> Contrast:
    """a − b paired by seed: `a`, `b` map seed -> value; only the seeds both hold (with values) count."""
    seeds = sorted(s for s in a if s in b and a[s] == a[s] and b[s] == b[s] and a[s] is not None and b[s] is not None)
    d = [float(a[s]) - float(b[s]) for s in seeds]
    iv = t_interval(d, level)
    if iv.n < 2:
        p = math.nan
    elif iv.sd == 0:
        p = 0.0 if iv.mean != 0 else 1.0
    else:
        p = _p_from_t(iv.mean / (iv.sd / math.sqrt(iv.n)), iv.n - 1)
    return Contrast(iv.mean, iv.lo, iv.hi, p, iv.n, True, iv.sd, n_a=iv.n, n_b=iv.n)


def welch_contrast(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Contrast:
    """a − b of two independent samples, Welch's t."""
    ia, ib = t_interval(a, level), t_interval(b, level)
    est = ia.mean - ib.mean
    if ia.n < 2 or ib.n < 2:
        return Contrast(est, math.nan, math.nan, math.nan, min(ia.n, ib.n), False, math.nan, ia.sd, ib.sd, ia.n, ib.n)
    va, vb = ia.sd ** 2 / ia.n, ib.sd ** 2 / ib.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Contrast(est, est, est, 0.0 if est != 0 else 1.0, min(ia.n, ib.n), False, math.nan,
                        ia.sd, ib.sd, ia.n, ib.n)
    df = (va + vb) ** 2 / (va ** 2 / (ia.n - 1) + vb ** 2 / (ib.n - 1))
    half = float(_st.t.ppf(0.5 + level / 2, df)) * se
    return Contrast(est, est - half, est + half, _p_from_t(est / se, df), min(ia.n, ib.n), False, math.nan,
                    ia.sd, ib.sd, ia.n, ib.n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input's order; NaNs stay NaN and do not count in the family."""
    idx = sorted((i for i, p in enumerate(pvalues) if p == p), key=lambda i: pvalues[i])
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def seeds_needed(c: Contrast, alpha: float = 1 - LEVEL) -> int | None:
    """The fewest seeds (per cell) at which the observed difference and spread would give a two-sided
    `alpha` test that excludes 0; None where no difference was observed or the spread is unknown;
    MAX_SEEDS + 1 for 'more than MAX_SEEDS'."""
    if c.estimate != c.estimate or c.estimate == 0:
        return None
    if c.paired:
        if c.sd != c.sd:
            return None
        var, df = (lambda n: c.sd ** 2 / n), (lambda n: n - 1)
    else:
        if c.sd_a != c.sd_a or c.sd_b != c.sd_b:
            return None
        s = c.sd_a ** 2 + c.sd_b ** 2
        q = c.sd_a ** 4 + c.sd_b ** 4
        var, df = (lambda n: s / n), (lambda n: (n - 1) * s * s / q if q else n - 1)
    for n in range(2, MAX_SEEDS + 1):
        if var(n) == 0 or _st.t.ppf(1 - alpha / 2, df(n)) * math.sqrt(var(n)) < abs(c.estimate):
            return n
    return MAX_SEEDS + 1


def verdict(c: Contrast, p_adjusted: float, family: int, level: float = LEVEL) -> str:
    """'resolved' where the adjusted p is below 1 - level; else 'not resolved at n seeds' and what would
    resolve it: the seeds the observed difference and spread need at the Bonferroni level
    (1 - level) / family, a bound on what Holm's correction needs."""
    alpha = 1 - level
    if p_adjusted == p_adjusted and p_adjusted < alpha:
        return "resolved"
    seeds = "seed" if c.n == 1 else "seeds"
    base = f"not resolved at {c.n} {seeds}"
    if c.n < 2:
        return base + " (spread unknown)"
    if c.p == c.p and c.p < alpha:  # the printed (unadjusted) interval excludes 0, Holm's correction does not
        base = f"not resolved after Holm's correction at {c.n} {seeds}"
    need = seeds_needed(c, alpha / max(1, family))
    if need is None:
        return base + " (no difference observed)"
    if need > MAX_SEEDS:
        return base + f" (over {MAX_SEEDS} needed)"
    return base + (f" (~{need} needed)" if need > c.n else "")
