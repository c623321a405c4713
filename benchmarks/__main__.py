"""python -m benchmarks [W1 W2 W3 MEM ...] [--quick] [--no-flower]

W1  FedAvg TextCNN on AG News: the fedcore engine, a hand-written PyTorch loop and Flower (w1.py)
W2  FedIT MiniLM + LoRA: the sequential and the batched executor (w2.py)
W3  the fairness_paradox smoke study end to end: the sweep's overhead (w3.py)
MEM peak memory against the number of clients; memory over 100 trials (memory.py)

Prints one table (workload, implementation, seconds per round min/median/max, final accuracy, peak
RSS) and one summary line of ratios; writes both to benchmarks/results/. Ratios are measured in one
run on this machine (these machines are shared and noisy: compare ratios, not seconds). --quick
runs fewer rounds and a smaller W3 (its time is not measured yet; creating Flower's environment the
first time takes a few minutes more).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from benchmarks.common import RESULTS, need_ag_news

WORKLOADS = ("W1", "W2", "W3", "MEM")


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(rows) -> str:
    head = f"{'workload':<10}{'implementation':<32}{'s min':>8}{'median':>8}{'max':>8}{'final acc':>11}{'peak RSS MB':>13}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        lo, med, hi = r.spread()
        lines.append(f"{r.workload:<10}{r.implementation:<32}{fmt(lo):>8}{fmt(med):>8}{fmt(hi):>8}"
                     f"{fmt(r.final_acc, '.4f'):>11}{fmt(r.peak_rss_mb, '.0f'):>13}  {r.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workloads", nargs="*", metavar="WORKLOAD", help=f"any of {', '.join(WORKLOADS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and a smaller W3")
    ap.add_argument("--no-flower", action="store_true", help="skip Flower in W1 (no environment is created)")
    args = ap.parse_args(argv)
    chosen = [w.upper() for w in args.workloads] or list(WORKLOADS)
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload {unknown[0]!r}; allowed: {', '.join(WORKLOADS)}")
    if any(w in chosen for w in ("W1", "W2", "MEM")) and need_ag_news():
        print(f"error: {need_ag_news()}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows, ratios, t0 = [], {}, time.perf_counter()
    for w in chosen:
        if w == "W1":
            from benchmarks import w1

            r, q = w1.run(args.quick, flower=not args.no_flower)
        elif w == "W2":
            from benchmarks import w2

            r, q = w2.run(args.quick)
        elif w == "W3":
            from benchmarks import w3

            r, q = w3.run(args.quick)
        else:
            from benchmarks import memory

            r, q = memory.run(args.quick)
        rows += r
        ratios.update(q)
    text = table(rows)
    summary = " ".join(f"{k.replace(' ', '_') if ' ' in k and not k.startswith('W') else k}={v:.2f}"
                       for k, v in ratios.items())
    load = os.getloadavg()[0]
    print("\n" + text)
    print(f"({time.perf_counter() - t0:.0f}s; 1-min load average {load:.2f} on {os.cpu_count()} cpus)")
    print(summary)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.txt").write_text(text + "\n" + summary + "\n")
    (RESULTS / "latest.json").write_text(json.dumps({"quick": args.quick, "ratios": ratios, "rows": [
        {"workload": r.workload, "implementation": r.implementation, "seconds": r.seconds, "final_acc": r.final_acc,
         "peak_rss_mb": r.peak_rss_mb, "note": r.note} for r in rows]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
