"""MLflow writes that could not reach the tracking store, kept in order and sent again.

A tracking server that dies in the middle of a launch must not stop it: trials go on training, and
what they report is kept here, in the launch's folder (`mlflow_outbox.jsonl`, one write a line, and
the artifacts beside it), until the store answers again; then the writes go out in the order they
were made. Writes are plain records ({"op": "metrics", "trial": ..., ...}) that the tracker applies
(sweeps/tracking.py, TrialTracker.apply), so a later driver (`--resume`) sends what an earlier one
kept. While the store is down, one try every `retry_s` seconds at most: a dead server costs a launch
one quick failure per half minute, not MLflow's retries (minutes) on every write.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

FILE = "mlflow_outbox.jsonl"
ARTIFACTS = "mlflow_outbox_artifacts"


def is_outage(e: BaseException) -> bool:
    """Whether `e` says the store cannot be reached now (worth another try later), rather than that
    the write is wrong (which trying again will not mend)."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(e, RestException):
        return e.get_http_status_code() >= 500
    if isinstance(e, MlflowException):
        text = str(e)
        return text.startswith("API request to") or "failed with exception" in text or e.get_http_status_code() >= 500
    return isinstance(e, (OSError, TimeoutError)) or type(e).__name__ in ("OperationalError", "ConnectionError")


class Outbox:
    def __init__(self, uri: str, folder: str | None, retry_s: float = 30.0):
        self.uri, self.retry_s = uri, retry_s
        self.folder = Path(folder) if folder and "://" not in folder else None  # remote storage: memory only
        self.pending: list[dict[str, Any]] = self._read()
        self.down_since: float | None = time.time() if self.pending else None
        self._next_try = 0.0
        self.sent_after_outage = 0

    def __getstate__(self):  # the tuner pickles its callbacks: the file is the truth, reread on restore
        return {k: v for k, v in self.__dict__.items() if k != "pending"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.pending = self._read()

    @property
    def path(self) -> Path | None:
        return self.folder / FILE if self.folder else None

    def _read(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def _write(self) -> None:
        if self.path is None:
            return
        if not self.pending:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.folder / ARTIFACTS, ignore_errors=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(op) + "\n" for op in self.pending))
        tmp.replace(self.path)  # whole or not at all: a kill mid-write leaves the last good file

    def keep_files(self, files: list[Path]) -> list[str]:
        """Copies of `files` (artifacts made in a temporary folder) where a kept write can find them later."""
        if self.folder is None:
            return [str(f) for f in files]
        d = self.folder / ARTIFACTS / f"{time.time_ns()}"
        d.mkdir(parents=True, exist_ok=True)
        return [str(shutil.copy2(f, d / f.name)) for f in files]

    def send(self, op: dict[str, Any], apply: Callable[[dict[str, Any]], None]) -> bool:
        """Apply `op` now, after whatever waits before it; keep it where the store is down. Whether it went."""
        if self.pending:
            self.flush(apply)
        if not self.pending:
            try:
                apply(op)
                return True
            except Exception as e:  # noqa: BLE001 - sorted by is_outage; a wrong write is raised again
                if not is_outage(e):
                    raise
                self._went_down(e)
        if "files" in op:  # made in a temporary folder that will be gone when the op goes out
            op = {**op, "files": self.keep_files([Path(f) for f in op["files"]])}
        self.pending.append(op)
        self._write()
        return False

    def flush(self, apply: Callable[[dict[str, Any]], None], force: bool = False) -> bool:
        """Send the kept writes in order (at most one try per retry_s unless `force`); whether none is left."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        sent = 0
        try:
            while self.pending:
                apply(self.pending[0])
                self.pending.pop(0)
                sent += 1
        except Exception as e:  # noqa: BLE001
            if not is_outage(e):
                raise
            self._went_down(e)
        finally:
            if sent:
                self._write()
        if not self.pending:
            self.sent_after_outage += sent
            if self.down_since is not None:
                print(f"note: MLflow at {self.uri} answers again after {time.time() - self.down_since:.0f} s: "
                      f"{sent} kept write(s) sent", file=sys.stderr, flush=True)
            self.down_since = None
        return not self.pending

    def drain(self, apply: Callable[[dict[str, Any]], None], wait_s: float) -> bool:
        """Keep trying for up to `wait_s` seconds (the launch's end); whether everything went."""
        deadline = time.monotonic() + wait_s
        while not self.flush(apply, force=True):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        return True

    def _went_down(self, e: BaseException) -> None:
        self._next_try = time.monotonic() + self.retry_s
        if self.down_since is None:
            self.down_since = time.time()
            where = f"in {self.path}" if self.path else "in memory (remote storage)"
            reason = " ".join(str(e).split())[:200]
            print(f"note: MLflow at {self.uri} cannot be reached ({reason}); the launch goes on and keeps its "
                  f"records {where}, trying again every {self.retry_s:.0f} s", file=sys.stderr, flush=True)
