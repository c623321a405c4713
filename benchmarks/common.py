"""What the workloads share: result rows, spreads, resident-memory sampling."""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
AG_NEWS = ROOT.parent / "shared" / "data" / "ag_news"
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Row:
    workload: str
    implementation: str
    seconds: list[float] = field(default_factory=list)  # per round (or per trial for W3)
    final_acc: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""

    def spread(self) -> tuple[float, float, float]:
        if not self.seconds:
            return (float("nan"),) * 3
        return min(self.seconds), statistics.median(self.seconds), max(self.seconds)


class PeakRSS:
    """Peak resident memory of a process and all its descendants (Ray workers included), sampled."""

    def __init__(self, pid: int | None = None, every: float = 0.2):
        self.proc, self.every, self.peak, self._stop = psutil.Process(pid), every, 0, threading.Event()

    def _total(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(self.every)

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._total())

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def need_ag_news() -> str | None:
    if not (AG_NEWS / "train.csv").is_file() or not (AG_NEWS / "test.csv").is_file():
        return f"AG News not found: expected train.csv and test.csv in {AG_NEWS}"
    return None


def ag_news_sources() -> dict[str, str]:
    return {"data.source": f"csv:{AG_NEWS / 'train.csv'}?text=text&label=label&class_names=World,Sports,Business,Sci/Tech",
            "data.test_source": f"csv:{AG_NEWS / 'test.csv'}?header=none&text=2&label=0&label_offset=1"}
