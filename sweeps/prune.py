"""A finished trial keeps its last checkpoint only.

Tune keeps every checkpoint a trial reports, here one a round: a local launch of 56 trials wrote
11 GB. Keeping the last N (Tune's CheckpointConfig(num_to_keep)) is not safe against a killed
driver: the experiment state Tune last saved, which `--resume` reads, may point at a checkpoint
already deleted, and that trial then fails. So this callback deletes a trial's older checkpoints
only once the saved state on the storage records the trial as TERMINATED (it never restores
again, and its record there names its last checkpoint), and keeps that last one: the launch's
results and its MLflow runs do not read checkpoints, and a `--resume` restores no finished trial.
Trials still running, errored or paused keep all theirs. Where Tune's saved state cannot be read
(another Ray's format, remote storage), nothing is deleted.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ray import tune

CHECK_EVERY_S = 30.0  # reading the saved state costs a parse of a file that grows with the trials


def terminated_in_saved_state(experiment_dir: Path) -> set[str] | None:
    """Ids of the trials that the newest saved experiment state records as TERMINATED; None where it
    cannot be read."""
    # the newest by its name's timestamp, as Tune's restore picks it: each driver writes its own file,
    # and the storage's copies of all of them get the same mtime when Tune syncs the folder
    states = sorted(p.name for p in experiment_dir.glob("experiment_state-*.json"))
    if not states:
        return None
    try:
        data = json.loads((experiment_dir / states[-1]).read_text())
        out = set()
        for entry in data["trial_data"]:
            trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
            if trial["status"] == "TERMINATED":
                out.add(str(trial["trial_id"]))
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def prune_checkpoints(trial) -> int:
    """Delete every checkpoint folder of `trial` but the one Tune holds as its latest; how many."""
    latest = trial.checkpoint
    if latest is None or latest.filesystem.type_name != "local":
        return 0
    keep = Path(latest.path).name
    gone = 0
    for folder in Path(latest.path).parent.glob("checkpoint_*"):
        if folder.is_dir() and folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)
            gone += 1
    return gone


class PruneFinished(tune.Callback):
    """Deletes a finished trial's older checkpoints once Tune's saved state says it finished."""

    def __init__(self):
        self._finished: set = set()  # trials completed in this driver and not yet pruned
        self._next = 0.0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished.add(trial)

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        if self._finished and now >= self._next:
            self._next = now + CHECK_EVERY_S
            self._prune(list(self._finished))

    def on_experiment_end(self, trials, **info):
        # Tune has just saved its final state (a stopped launch's too): every trial it records as
        # finished, those a driver before this one finished included
        self._prune(list(trials))

    def _prune(self, trials) -> None:
        if not trials:
            return
        experiment = Path(trials[0].storage.experiment_fs_path)
        if trials[0].storage.storage_filesystem.type_name != "local":
            return
        done = terminated_in_saved_state(experiment)
        if done is None:
            return
        for trial in trials:
            if trial.trial_id in done and trial.status == "TERMINATED":
                prune_checkpoints(trial)
                self._finished.discard(trial)

    def __getstate__(self):  # pickled with the experiment: trials and clocks are this driver's
        return {}

    def __setstate__(self, state):
        self.__init__()
