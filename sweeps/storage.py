"""The launch's storage while it runs.

A disk that fills up, or a mount that turns read-only, in the middle of a launch makes every trial
fail its checkpoint writes and Tune's own state saves fail after them: trials end ERROR one by one
and the driver dies with a traceback. Instead, a callback looks at the storage every second
and, at the first sign (less than MIN_FREE_MB free, or a write refused), stops the launch as Ctrl-C
does, while there is still room for Tune to save its state. The launch then ends with one line
saying what happened and the command that continues it.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

from ray import tune

from fedcore.paths import writable_dir

# room kept for Tune's last state save and the checkpoints of the trials that are running when the
# launch stops (a MiniLM fully fine-tuned writes about 90 MB per checkpoint)
MIN_FREE_MB = 200
# a statvfs and one small write: cheap enough every second, and two trials writing checkpoints can
# fill 150 MB in under 5 s (a write that hits a full disk, not this watch, then stops the launch)
CHECK_EVERY_S = 1.0

# why the running launch was stopped (set by StorageWatch, read by the launch once Tune returns); a
# module global because Tune.restore brings back its own unpickled copy of the callback
stopped: str | None = None


def storage_problem(path: str, min_free_mb: float = MIN_FREE_MB) -> str | None:
    """What is wrong with the local folder `path` (or its nearest existing parent) as a launch's
    storage: too little free space, or a write refused; None when it is fine or `path` is a URI."""
    if "://" in path:
        return None
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return f"{p} is a file, not a folder"
    try:
        writable_dir(p, "storage")  # a real write: root passes access checks on read-only mounts
        free = shutil.disk_usage(p).free / 2**20
    except ValueError as e:
        return str(e)[str(e).find("cannot write there"):]
    except OSError as e:
        return f"cannot read its free space ({e.strerror or e})"
    if free < min_free_mb:
        return f"{free:.0f} MiB free, below the {min_free_mb:.0f} MiB a launch keeps for its checkpoints and state"
    return None


class StorageWatch(tune.Callback):
    """Stops the launch (SIGINT to this driver: Tune saves its state as on Ctrl-C) when its storage
    fills up or stops taking writes."""

    def __init__(self, path: str):
        self.path = path
        self._next = 0.0

    def on_step_begin(self, iteration, trials, **info):
        global stopped
        now = time.monotonic()
        if stopped is not None or now < self._next:
            return
        self._next = now + CHECK_EVERY_S
        problem = storage_problem(self.path)
        if problem is not None:
            stopped = problem
            print(f"storage {self.path}: {problem}; stopping the launch with its state saved", file=sys.stderr,
                  flush=True)
            os.kill(os.getpid(), signal.SIGINT)

    def __getstate__(self):  # pickled with the experiment: the clock is this process's
        return {"path": self.path}

    def __setstate__(self, state):
        self.path, self._next = state["path"], 0.0
