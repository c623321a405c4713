"""What the driver keeps of a finished trial.

Tune keeps, for every trial of an experiment, the last 5 and last 10 values of each reported metric
in deques (`run_metadata.metric_n_steps`, for its "last-n-avg" scopes) for as long as the driver
runs. A trial here reports about 50 numbers a round, so a launch of a few hundred trials grows the
driver by megabytes that nothing reads once a trial has ended: this launch reads results, never
those scopes. A finished trial's deques are dropped (its min/max/avg/last summary stays, for Tune's
own best-trial queries). Measured by `python -m benchmarks.memory driver N`.
"""
from __future__ import annotations

from ray import tune


def drop_step_windows(trial) -> bool:
    """Empty a trial's per-metric deques; False where this Ray keeps them elsewhere (private API)."""
    meta = getattr(trial, "run_metadata", None)
    if meta is None or not isinstance(getattr(meta, "metric_n_steps", None), dict):
        return False
    meta.metric_n_steps = {}  # a new attribute: the metadata's cached JSON is invalidated with it
    return True


class TrimFinished(tune.Callback):
    """Drops what Tune keeps of a trial's metric history once the trial has completed. Only completed
    trials: an errored one may be restarted and report again into those deques."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        drop_step_windows(trial)
