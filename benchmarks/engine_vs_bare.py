"""W1: FedAvg TextCNN on AG News, fedcore engine vs the simplest hand-written PyTorch loop.

Both run in this one process on the engine's tokenized tensors, the same cohorts and the same
initial weights; their rounds interleave (engine 1, bare 1, bare 2, engine 2, engine 3, ...) so
that load from other processes, and cache warmth, hit both alike. Timed: the training part of a round (cohort, local updates,
aggregation), not evaluation. Both final models are then scored on the same test tensors.

    python -m benchmarks [--quick | --rounds N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ag_news"
RESULTS = ROOT / "benchmarks" / "results" / "engine_vs_bare.json"
THREADS, SEED, BATCH, LR, MOMENTUM = 2, 0, 32, 0.01, 0.9


def make_federation(rounds: int):
    from fedcore.config import make_config
    from fedcore.federation import Federation

    cfg = make_config({}, **{
        "data.source": f"csv:{DATA / 'train.csv'}?text=text&label=label&class_names=World,Sports,Business,Sci/Tech",
        "data.test_source": f"csv:{DATA / 'test.csv'}?header=none&text=2&label=0&label_offset=1",
        "data.max_test_samples": 2000, "partition.kind": "dirichlet", "partition.alpha": 0.5,
        "partition.num_clients": 100, "clients_per_round": 10, "model.name": "textcnn",
        "optimizer.name": "sgd", "optimizer.lr": LR, "optimizer.momentum": MOMENTUM,
        "local_epochs": 1, "batch_size": BATCH, "rounds": rounds, "seed": SEED,
        "eval.every": rounds})  # evaluate only after the last round: train_seconds is then pure training
    return Federation(cfg)


class BareFedAvg:
    """FedAvg as one would write it by hand: one resident model, a fresh SGD per client."""

    def __init__(self, fed):
        from fedcore.executors import derive_seed
        from fedcore.models.textcnn import TextCNN

        self.fed, self.derive_seed = fed, derive_seed
        m = fed.cfg.model
        torch.manual_seed(derive_seed(SEED, 0, 0, 2))  # the seed the engine initialises its model with
        self.model = TextCNN(fed.data.vocab_size, fed.data.num_classes, m.embed_dim, m.num_filters,
                             tuple(m.kernel_sizes), m.dropout)
        self.global_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        assert all(torch.equal(self.global_state[k], v) for k, v in fed.global_state.items()), "init differs"
        self.ids = fed.data.train_inputs["input_ids"]
        self.lengths = fed.data.train_inputs["lengths"]
        self.labels = fed.data.train_labels

    def run_round(self, round_: int) -> None:
        states, sizes = [], []
        for k in self.fed.sample_clients(round_):
            self.model.load_state_dict(self.global_state)
            self.model.train()
            opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
            # the engine's per-client seed, so shuffling and dropout match it draw for draw
            seed = self.derive_seed(SEED, round_, k, 1)
            torch.manual_seed(seed)
            idx = torch.as_tensor(self.fed.data.client_train[k])
            order = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
            for start in range(0, len(order), BATCH):
                rows = order[start:start + BATCH]
                # cut the padding columns no row of the batch uses, as the engine does: same
                # arithmetic (padded positions would change the max-over-time) and same FLOPs
                ids = self.ids[rows, :int(self.lengths[rows].max())]
                loss = F.cross_entropy(self.model({"input_ids": ids}), self.labels[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
            states.append({n: v.clone() for n, v in self.model.state_dict().items()})
            sizes.append(len(idx))
        total = sum(sizes)
        self.global_state = {n: sum(s[n] * (size / total) for s, size in zip(states, sizes)) for n in states[0]}


@torch.inference_mode()
def accuracy(fed, state: dict[str, torch.Tensor]) -> float:
    """Accuracy of `state` on the test tensors; one scorer for both, so any gap is the weights'."""
    model = fed.model
    model.load_state_dict(state)
    model.eval()
    ids, labels = fed.data.test_inputs["input_ids"], fed.data.test_labels
    pred = torch.cat([model({"input_ids": ids[i:i + 256]}).argmax(-1) for i in range(0, len(ids), 256)])
    return float((pred == labels).float().mean())


def spread(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 rounds instead of 10")
    ap.add_argument("--rounds", type=int, help="number of rounds (overrides --quick)")
    args = ap.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (4 if args.quick else 10)
    if rounds < 1:
        ap.error("--rounds must be at least 1")
    if not (DATA / "train.csv").is_file() or not (DATA / "test.csv").is_file():
        print(f"AG News not found: expected train.csv and test.csv in {DATA}", file=sys.stderr)
        return 2

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    fed = make_federation(rounds)
    bare = BareFedAvg(fed)
    # torch's first optimizer imports torch._dynamo (~2 s, once per process); pay that here, or
    # whichever loop runs round 1 first is charged for it
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    print(f"data + models ready in {time.perf_counter() - t0:.1f}s; {rounds} rounds, {THREADS} threads")

    load_before = os.getloadavg()[0]  # other processes on the machine inflate both columns
    engine_s, bare_s = [], []
    for r in range(1, rounds + 1):
        # alternate which loop goes first: the second one finds the cohort's rows warm in cache
        def run_bare() -> None:
            t = time.perf_counter()
            bare.run_round(r)
            bare_s.append(time.perf_counter() - t)

        if r % 2 == 0:
            run_bare()
        engine_s.append(fed.run_round()["train_seconds"])
        if r % 2 == 1:
            run_bare()
        print(f"  round {r:>3}: engine {engine_s[-1]:6.2f}s  bare {bare_s[-1]:6.2f}s")

    fed_final = {k: v.clone() for k, v in fed.global_state.items()}
    max_diff = max(float((fed_final[k] - bare.global_state[k]).abs().max()) for k in fed_final)
    rows = {"engine": (spread(engine_s), accuracy(fed, fed_final)),
            "bare": (spread(bare_s), accuracy(fed, bare.global_state))}
    of_medians = rows["engine"][0]["median"] / rows["bare"][0]["median"]
    # the headline: each engine round over its bare twin (same cohort, run back to back), then the
    # median. On a shared machine load comes and goes between rounds; a ratio of medians can pair
    # a loaded engine round with a quiet bare one, a paired ratio mostly cannot.
    ratio = statistics.median(e / b for e, b in zip(engine_s, bare_s))

    print(f"\n{'':8}{'s/round min':>12}{'median':>9}{'max':>9}{'final acc':>11}")
    for name, (s, acc) in rows.items():
        print(f"{name:8}{s['min']:12.2f}{s['median']:9.2f}{s['max']:9.2f}{acc:11.4f}")
    print(f"max |engine - bare| final weight: {max_diff:.2e} (engine averages in float64, bare in float32)")
    print(f"1-min load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} cpus)")
    print(f"W1 engine/bare={ratio:.2f} (median of per-round ratios; ratio of medians {of_medians:.2f})")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "workload": "W1 textcnn ag_news fedavg 100 clients dir(0.5) 10/round 1 epoch b32 sgd(0.01, 0.9)",
        "rounds": rounds, "threads": THREADS,
        "engine": {"seconds_per_round": engine_s, **rows["engine"][0], "final_acc": rows["engine"][1]},
        "bare": {"seconds_per_round": bare_s, **rows["bare"][0], "final_acc": rows["bare"][1]},
        "ratio_engine_over_bare": ratio, "ratio_of_medians": of_medians, "max_weight_diff": max_diff,
        "load_average": [load_before, os.getloadavg()[0]],
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
