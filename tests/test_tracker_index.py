"""The MLflow tracker's per-stage index (sweeps/tracking.py TrialTracker._stage), on a real sqlite
store without Ray: child runs numbered in order across drivers, a resumed trial keeps its run, a
create whose answer was lost is not made twice, and a tracker pickled before the index still works."""
from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeps.tracking import TrialTracker, start_parent_run

STAGE = "cell-a/tune"


@pytest.fixture()
def launch(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _, parent = start_parent_run(uri, "idx", "smoke", ["idx"], str(tmp_path), str(tmp_path))
    return uri, parent, tmp_path


def tracker(launch) -> TrialTracker:
    uri, parent, d = launch
    return TrialTracker(uri, "idx", parent, outbox_dir=str(d))


def start(t: TrialTracker, name: str) -> dict:
    """The write log_trial_start makes for a tuning trial of cell-a."""
    return {"op": "start", "trial": name, "stage": STAGE, "params": {},
            "tags": {**t.tags, "trial_name": name, "stage": STAGE}, "name": {"_cell": "cell-a", "_stage": "tune"}}


def runs(launch) -> dict[str, str]:
    uri, parent, _ = launch
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("idx")
    found = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=100)
    return {r.info.run_name: r.data.tags["trial_name"] for r in found}


def test_runs_are_numbered_across_drivers_and_a_resumed_trial_keeps_its_run(launch):
    first = tracker(launch)
    for name in ("t_1", "t_2"):
        first._send(start(first, name))
    second = tracker(launch)  # a later driver (--resume): it reads the store once
    second._send(start(second, "t_2"))  # resumed: the same run
    second._send(start(second, "t_3"))
    assert runs(launch) == {"cell-a / tune 1": "t_1", "cell-a / tune 2": "t_2", "cell-a / tune 3": "t_3"}
    assert second._run_ids["t_2"] == first._run_ids["t_2"]


def test_a_create_whose_answer_was_lost_is_not_made_twice(launch):
    t = tracker(launch)
    real = t.client.create_run
    calls = []

    def made_then_lost(*args, **kwargs):
        calls.append(real(*args, **kwargs))  # the store makes the run ...
        if len(calls) == 1:  # ... and the first answer never arrives
            raise MlflowException("API request to http://127.0.0.1:5000 failed with exception timeout")
        return calls[-1]

    t.client.create_run = made_then_lost
    assert t.outbox.send(start(t, "t_1"), t.apply) is False  # kept for later
    assert t.outbox.flush(t.apply, force=True)  # sent again: the run it made is found, none added
    assert len(calls) == 1 and runs(launch) == {"cell-a / tune 1": "t_1"}


def test_a_tracker_pickled_before_the_index_still_starts_trials(launch):
    t = tracker(launch)
    state = t.__getstate__()
    del state["_stages"]  # as a launch from before the index pickled it (tuner.pkl)
    old = TrialTracker.__new__(TrialTracker)
    old.__setstate__(state)
    old._send(start(old, "t_1"))
    assert STAGE in old._stages and runs(launch) == {"cell-a / tune 1": "t_1"}
