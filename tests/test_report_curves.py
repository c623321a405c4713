"""Curves over rounds (sweeps/report_common.plot_curves) on a real sqlite MLflow store: the mean and the
Student-t band over seeds, and rounds that no run evaluated (eval.every > 1 logs NaN there) left out
rather than drawn as a gap or a zero."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

import sweeps.report_common as rc


@pytest.fixture
def store(tmp_path):
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import log_metrics

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("curves")
    # two seeds: evaluated at rounds 1 and 3 only; round 2 and 4 are NaN, round 5 only seed 0 logged
    values = {0: {1: 0.40, 2: math.nan, 3: 0.60, 4: math.nan, 5: 0.7},
              1: {1: 0.50, 2: math.nan, 3: 0.80, 4: math.nan}}
    records = []
    for seed, curve in values.items():
        run_id = client.create_run(exp).info.run_id
        for step, v in curve.items():
            log_metrics(client, run_id, {"global_acc": v}, step)
        records.append({"run_id": run_id})
    return client, records, values


def _drawn(monkeypatch, client, groups, tmp_path, **kw):
    figs = []
    monkeypatch.setattr(rc, "save_figure", lambda fig, path: figs.append(fig))
    rc.plot_curves(client, groups, "global_acc", tmp_path / "c.png", title="t", ylabel="acc", **kw)
    assert len(figs) == 1
    return figs[0]


def test_curve_skips_unevaluated_rounds_and_bands_the_seed_spread(store, tmp_path, monkeypatch):
    client, records, values = store
    fig = _drawn(monkeypatch, client, {("p", "fedavg"): records}, tmp_path)
    ax = fig.axes[0]
    line = ax.lines[0]
    # rounds both seeds logged (1..4), less the all-NaN ones (2, 4); round 5 has one seed: not common
    assert list(line.get_xdata()) == [1, 3]
    np.testing.assert_allclose(line.get_ydata(), [45.0, 70.0])
    assert line.get_label() == "fedavg (n=2)"
    # the band: mean +- t(0.975, 1) * sd / sqrt(2), in percent
    band = ax.collections[0].get_paths()[0].vertices
    half = stats.t.ppf(0.975, 1) * np.std([[40, 60], [50, 80]], axis=0, ddof=1) / np.sqrt(2)
    mean = np.array([45.0, 70.0])
    np.testing.assert_allclose(band[:, 1].max(), (mean + half).max())
    np.testing.assert_allclose(band[:, 1].min(), (mean - half).min())
    assert set(band[:, 0]) == {1.0, 3.0}


def test_one_seed_has_no_band_and_a_series_without_runs_is_left_out(store, tmp_path, monkeypatch):
    client, records, _ = store
    fig = _drawn(monkeypatch, client, {("p", "a"): records[:1], ("p", "b"): []}, tmp_path)
    ax = fig.axes[0]
    assert [ln.get_label() for ln in ax.lines] == ["a (n=1)"]
    assert list(ax.lines[0].get_xdata()) == [1, 3, 5]
    assert not ax.collections  # n = 1: no interval to draw
