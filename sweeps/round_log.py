"""Each trial's result.json and progress.csv hold each round once.

Tune's loggers only append. A trial restored from a checkpoint older than its last logged round
trains the rounds after that checkpoint again, and they are appended a second time: it happens when
the driver is killed (SIGKILL, a lost head) between a round's result and Tune's next save of the
experiment, or when a full disk cuts that save short, so the resumed launch restores an older
checkpoint than the one the result followed. These loggers rewind a trial's file to the rounds
before the one it reports again (those rows came from the run that was cut off; the rerun from the
checkpoint is what the trial now is), then append as Tune's do; a trial restarted within a driver
keeps the driver's own copy of its file. MLflow's record is kept single by the tracker
(sweeps/tracking.py skips a round its run holds already); a resumed round is bit for bit the one it
repeats (tests/test_tune.py), so the two records agree.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

ROUND = "round"


def _json_round(line: str) -> float | None:
    try:
        value = json.loads(line).get(ROUND)
    except (ValueError, AttributeError):
        return None  # a line cut short by the kill: dropped with the rows after it
    return float(value) if value is not None else None


def _rewind(path: Path, before: float, round_of: Callable[[str], float | None], header: bool) -> int:
    """Keep the rows of `path` whose round is below `before` (and its header line); returns how many
    rows were dropped. Written to a new file and renamed over the old, so a failure leaves it whole."""
    lines = path.read_text().splitlines(keepends=True)
    head, rows = (lines[:1], lines[1:]) if header else ([], lines)
    rounds = [round_of(line) for line in rows]
    if all(r is None for r in rounds):
        return 0  # nothing here it can read: leave the file as Tune wrote it
    # rows are in order: the first repeated one ends what is kept; a line cut short by a kill goes
    kept = []
    for line, r in zip(rows, rounds):
        if r is not None and r >= before:
            break
        if r is not None:
            kept.append(line)
    if len(kept) == len(rows):
        return 0
    tmp = path.with_name(path.name + ".rewind")
    tmp.write_text("".join(head + kept))
    os.replace(tmp, path)
    return len(rows) - len(kept)


def _last_round(path: Path, round_of: Callable[[str], float | None], header: bool) -> float | None:
    if not path.exists():
        return None
    rows = path.read_text().splitlines()[1 if header else 0:]
    for line in reversed(rows):
        r = round_of(line)
        if r is not None:
            return r
    return None


class _Rewinding:
    """What both loggers share: the last round each trial's file holds, read from the file the first
    time this driver logs the trial, and a rewind when a round comes again."""

    FILE: str
    HEADER: bool

    def __init__(self):
        super().__init__()
        self._last: dict = {}  # trial -> the last round its file holds

    def _parser(self, path: Path) -> Callable[[str], float | None]:
        """A row's round, from one line of this logger's file."""
        raise NotImplementedError

    def _open(self, trial) -> None:
        """Tune's own opening of the trial's file: the driver's copy, fetched from the storage first."""
        raise NotImplementedError

    def _restore_from_remote(self, file_name: str, trial) -> None:
        # Tune fetches the storage's copy each time a trial (re)starts; once this driver has logged the
        # trial, its own copy is newer (the storage's is synced with the experiment, every ~10 s): a
        # trial restarted after a lost node would lose the rows in between
        if trial not in self._last:
            super()._restore_from_remote(file_name, trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        last, r = self._last, result.get(ROUND)
        if r is not None:
            path = Path(trial.local_path, self.FILE)
            if trial not in self._trial_files:
                self._open(trial)
            if trial not in last:
                last[trial] = _last_round(path, self._parser(path), self.HEADER)
            if last[trial] is not None and float(r) <= last[trial]:
                self.log_trial_end(trial)  # closes Tune's handle; its append below reopens the file
                _rewind(path, float(r), self._parser(path), self.HEADER)
            last[trial] = float(r)
        super().log_trial_result(iteration, trial, result)


class RoundJson(_Rewinding, JsonLoggerCallback):
    """Tune's result.json logger, rewound on a repeated round."""

    FILE, HEADER = "result.json", False

    def _parser(self, path: Path) -> Callable[[str], float | None]:
        return _json_round

    def _open(self, trial) -> None:
        self.log_trial_start(trial)


class RoundCsv(_Rewinding, CSVLoggerCallback):
    """Tune's progress.csv logger, rewound on a repeated round."""

    FILE, HEADER = "progress.csv", True

    def _open(self, trial) -> None:
        self._setup_trial(trial)

    def _parser(self, path: Path) -> Callable[[str], float | None]:
        names = []
        if path.exists():
            with path.open(newline="") as f:
                names = next(csv.reader(f), [])
        if ROUND not in names:
            return lambda line: None
        column = names.index(ROUND)

        def round_of(line: str) -> float | None:
            try:
                return float(next(csv.reader([line]))[column])
            except (ValueError, IndexError, StopIteration):
                return None
        return round_of
