"""The report statistics (sweeps/stats.py) against hand-computed cases."""
import math

import pytest
from scipy import stats as st

from sweeps.stats import (Contrast, holm, paired_contrast, seeds_needed, t_interval, verdict, welch_contrast)

T975 = {1: 12.706204736174707, 2: 4.302652729911275, 4: 2.7764451051977987, 5: 2.570581835636314,
        6: 2.4469118511449692}


def test_t_interval_three_values():
    iv = t_interval([1.0, 2.0, 3.0])
    half = T975[2] * 1.0 / math.sqrt(3)
    assert (iv.mean, iv.sd, iv.n) == (2.0, 1.0, 3)
    assert iv.lo == pytest.approx(2 - half) and iv.hi == pytest.approx(2 + half)
    assert iv.hi - iv.lo == pytest.approx(4.968275, abs=1e-6)


def test_t_interval_two_values_is_wide():
    iv = t_interval([0.0, 2.0])
    # sd = sqrt(2), se = 1: the interval is mean ± t(0.975, 1)
    assert iv.sd == pytest.approx(math.sqrt(2))
    assert (iv.lo, iv.hi) == pytest.approx((1 - T975[1], 1 + T975[1]))


def test_t_interval_one_value_has_no_spread_and_nan_is_dropped():
    iv = t_interval([0.7, float("nan"), None])
    assert iv.mean == 0.7 and iv.n == 1
    assert math.isnan(iv.sd) and math.isnan(iv.lo) and math.isnan(iv.hi)
    empty = t_interval([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_t_interval_zero_variance_is_the_point():
    iv = t_interval([0.25] * 4)
    assert (iv.sd, iv.lo, iv.hi) == (0.0, 0.25, 0.25)


def test_t_interval_other_level():
    iv = t_interval([1.0, 2.0, 3.0], level=0.9)
    assert iv.hi - 2 == pytest.approx(2.919985580355516 / math.sqrt(3))


def test_paired_contrast_where_pairing_matters():
    # seeds differ a lot (the partition), the arms differ by about 1 on every seed
    a = {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0, 5: 50.0}
    b = {1: 9.0, 2: 18.8, 3: 29.2, 4: 38.9, 5: 49.1}
    c = paired_contrast(a, b)
    d = [1.0, 1.2, 0.8, 1.1, 0.9]
    sd = math.sqrt(sum((x - 1.0) ** 2 for x in d) / 4)
    assert c.paired and c.n == 5
    assert c.estimate == pytest.approx(1.0) and c.sd == pytest.approx(sd)
    t = 1.0 / (sd / math.sqrt(5))
    assert c.p == pytest.approx(2 * st.t.sf(t, 4))
    assert c.lo == pytest.approx(1 - T975[4] * sd / math.sqrt(5))
    assert c.p < 1e-3
    # the same numbers as independent samples: nothing resolved
    w = welch_contrast(list(a.values()), list(b.values()))
    assert not w.paired and w.estimate == pytest.approx(1.0) and w.p > 0.8 and w.lo < 0 < w.hi


def test_paired_contrast_uses_only_common_seeds():
    c = paired_contrast({1: 0.5, 2: 0.7, 3: 0.9}, {2: 0.6, 3: 0.6, 4: 0.1})
    assert c.n == 2 and c.estimate == pytest.approx((0.1 + 0.3) / 2)


def test_paired_contrast_n1_and_zero_variance():
    one = paired_contrast({1: 0.5}, {1: 0.2})
    assert one.n == 1 and one.estimate == pytest.approx(0.3) and math.isnan(one.p) and math.isnan(one.lo)
    const = paired_contrast({1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.5})
    assert const.sd == pytest.approx(0.0, abs=1e-12)
    assert const.p == 0.0 and const.lo == pytest.approx(0.1) and const.hi == pytest.approx(0.1)
    same = paired_contrast({1: 0.5, 2: 0.6}, {1: 0.5, 2: 0.6})
    assert same.estimate == 0 and same.p == 1.0


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0]
    c = welch_contrast(a, b)
    va, vb = (5 / 3) / 4, 4.0 / 3
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    assert df == pytest.approx(3.2347, abs=1e-4)
    assert c.estimate == pytest.approx(-1.5)
    assert c.p == pytest.approx(2 * st.t.sf(1.5 / se, df))
    assert c.p == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    assert c.hi - c.estimate == pytest.approx(st.t.ppf(0.975, df) * se)
    assert (c.n_a, c.n_b, c.n) == (4, 3, 3)
    one_arm = welch_contrast([1.0], [2.0, 3.0])
    assert math.isnan(one_arm.p) and one_arm.estimate == -1.5


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, float("nan"), 0.02])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([]) == []


def test_seeds_needed_by_hand():
    # paired, sd of differences 1, difference 1: t(0.975, n-1) / sqrt(n) < 1 first at n = 7
    c = Contrast(1.0, 0, 0, 0.3, 3, True, 1.0)
    assert T975[5] / math.sqrt(6) > 1 > T975[6] / math.sqrt(7)
    assert seeds_needed(c) == 7
    # a stricter level needs more
    assert seeds_needed(c, 0.05 / 4) > 7
    assert seeds_needed(Contrast(0.0, 0, 0, 1, 3, True, 1.0)) is None
    assert seeds_needed(Contrast(1e-9, 0, 0, 1, 3, True, 1.0)) == 1001
    # independent arms of sd 1 each: the variance of the difference is 2 / n
    w = Contrast(1.0, 0, 0, 0.3, 3, False, math.nan, 1.0, 1.0, 3, 3)
    n = seeds_needed(w)
    assert st.t.ppf(0.975, 2 * (n - 1)) * math.sqrt(2 / n) < 1 <= st.t.ppf(0.975, 2 * (n - 2)) * math.sqrt(2 / (n - 1))


def test_verdicts():
    c = paired_contrast({1: 0.5, 2: 0.62, 3: 0.55}, {1: 0.45, 2: 0.5, 3: 0.52})
    assert verdict(c, 0.001, 1) == "resolved"
    text = verdict(c, holm([c.p])[0], 1)
    assert text.startswith("not resolved at 3 seeds (~") and text.endswith(" needed)")
    assert int(text.split("~")[1].split()[0]) == seeds_needed(c)
    assert verdict(paired_contrast({1: 0.5}, {1: 0.1}), math.nan, 1) == "not resolved at 1 seed (spread unknown)"
    same = paired_contrast({1: 0.5, 2: 0.6}, {1: 0.5, 2: 0.6})
    assert verdict(same, 1.0, 3) == "not resolved at 2 seeds (no difference observed)"
