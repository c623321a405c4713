"""W1: FedAvg, TextCNN (~2.7M parameters) on AG News (train.csv as the pool), 100 clients, Dirichlet
0.5, 10 clients a round, 1 local epoch, batch 32, SGD lr 0.01 momentum 0.9, evaluation every 5
rounds, 2 CPU threads, seed 0: the fedcore engine, the simplest hand-written PyTorch loop, and
Flower's Ray simulation (its own virtual environment, benchmarks/flower_env.py).

Engine and hand-written loop run in this one process on the engine's tensors, with the same
cohorts and initial weights; their rounds interleave and alternate which goes first, so that load
from other processes and cache warmth hit both alike. A round's time includes its evaluation: the
engine computes its full metric set (every client's test split, every class), the loop the global
test accuracy. Flower runs W1's data, partition and initial weights, written to a file, with its
own client sampling; once with one torch thread per client actor (its best) and once with torch's
default threads.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import PeakRSS, Row, ag_news_sources

THREADS, SEED, BATCH, LR, MOMENTUM, EVERY = 2, 0, 32, 0.01, 0.9, 5


def make_federation(rounds: int, clients: int = 100):
    from fedcore.resolve import make_config
    from fedcore.federation import Federation

    cfg = make_config({}, **{
        **ag_news_sources(), "partition.kind": "dirichlet", "partition.alpha": 0.5, "partition.num_clients": clients,
        "clients_per_round": 10, "model.name": "textcnn", "optimizer.name": "sgd", "optimizer.lr": LR,
        "optimizer.momentum": MOMENTUM, "local_epochs": 1, "batch_size": BATCH, "rounds": rounds, "seed": SEED,
        "eval.every": EVERY, "torch_threads": THREADS})
    return Federation(cfg)


class BareFedAvg:
    """FedAvg as one would write it by hand: one resident model, state loaded per client, a fresh SGD
    per client, tensors sliced by index, global test accuracy every 5 rounds."""

    def __init__(self, fed):
        from fedcore.seeds import Purpose, derive_seed
        from fedcore.models.textcnn import TextCNN

        self.fed, self.derive_seed, self.purpose = fed, derive_seed, Purpose
        m = fed.cfg.model
        torch.manual_seed(derive_seed(SEED, 0, 0, Purpose.MODEL_INIT))  # the seed the engine initialises its model with
        self.model = TextCNN(fed.data.vocab_size, fed.data.num_classes, m.embed_dim, m.num_filters,
                             tuple(m.kernel_sizes), m.dropout)
        self.global_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        assert all(torch.equal(self.global_state[k], v) for k, v in fed.global_state.items()), "init differs"
        self.ids, self.lengths = fed.data.train_inputs["input_ids"], fed.data.train_inputs["lengths"]
        self.labels = fed.data.train_labels
        self.acc = float("nan")

    def run_round(self, round_: int) -> None:
        states, sizes = [], []
        for k in self.fed.sample_clients(round_):
            self.model.load_state_dict(self.global_state)
            self.model.train()
            opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
            # the engine's per-client seed, so shuffling and dropout match it draw for draw
            seed = self.derive_seed(SEED, round_, k, self.purpose.LOCAL_TRAINING)
            torch.manual_seed(seed)
            idx = torch.as_tensor(self.fed.data.client_train[k])
            order = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
            for start in range(0, len(order), BATCH):
                rows = order[start:start + BATCH]
                # cut the padding columns no row of the batch uses, as the engine does (same FLOPs)
                ids = self.ids[rows, :int(self.lengths[rows].max())]
                loss = F.cross_entropy(self.model({"input_ids": ids}), self.labels[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
            states.append({n: v.clone() for n, v in self.model.state_dict().items()})
            sizes.append(len(idx))
        total = sum(sizes)
        self.global_state = {n: sum(s[n] * (size / total) for s, size in zip(states, sizes)) for n in states[0]}
        if round_ % EVERY == 0 or round_ == self.fed.cfg.rounds:
            self.acc = accuracy(self.fed, self.model, self.global_state)


@torch.inference_mode()
def accuracy(fed, model, state: dict[str, torch.Tensor]) -> float:
    """Accuracy of `state` on the global test tensors, in order, 256 at a time."""
    model.load_state_dict(state)
    model.eval()
    ids, labels = fed.data.test_inputs["input_ids"], fed.data.test_labels
    pred = torch.cat([model({"input_ids": ids[i:i + 256]}).argmax(-1) for i in range(0, len(ids), 256)])
    return float((pred == labels).float().mean())


def export(fed, path: Path) -> None:
    """W1's data, partition and initial weights for the Flower run."""
    m, d = fed.cfg.model, fed.data
    torch.save({"ids": d.train_inputs["input_ids"], "lengths": d.train_inputs["lengths"], "labels": d.train_labels,
                "clients": [torch.as_tensor(i) for i in d.client_train],
                "test_ids": d.test_inputs["input_ids"], "test_labels": d.test_labels,
                "initial": {k: v.clone() for k, v in fed.global_state.items()},
                "model": {"vocab": d.vocab_size, "classes": d.num_classes, "embed_dim": m.embed_dim,
                          "filters": m.num_filters, "kernels": list(m.kernel_sizes), "dropout": m.dropout},
                "hyper": {"lr": LR, "momentum": MOMENTUM, "batch": BATCH}}, path)


def run_flower(python: str, data: Path, rounds: int, threads: int) -> Row:
    label = "flower (1 torch thread/actor)" if threads == 1 else "flower (torch default threads)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "flower.json"
        cmd = [python, str(Path(__file__).with_name("flower_w1.py")), "--data", str(data), "--rounds", str(rounds),
               "--threads", str(threads), "--out", str(out)]
        env = {**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONWARNINGS": "ignore"}
        env.pop("PYTHONPATH", None)
        with PeakRSS() as rss:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return Row("W1", label, note="failed: " + " | ".join(tail)[:300])
        res = json.loads(out.read_text())
    return Row("W1", label, res["seconds_per_round"], res.get("final_acc"), rss.mb)


def run(quick: bool, flower: bool, log=print) -> tuple[list[Row], dict[str, float]]:
    rounds = 6 if quick else 20
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        fed = make_federation(rounds)
        bare = BareFedAvg(fed)
        log(f"W1: data + models ready in {time.perf_counter() - t0:.1f}s; {rounds} rounds, {THREADS} threads, "
            f"executor {fed.executor.name}")
        engine_s, bare_s = [], []
        for r in range(1, rounds + 1):
            def run_bare() -> None:
                t = time.perf_counter()
                bare.run_round(r)
                bare_s.append(time.perf_counter() - t)

            if r % 2 == 0:  # alternate which goes first: the second finds the cohort's rows warm in cache
                run_bare()
            t = time.perf_counter()
            metrics = fed.run_round()
            engine_s.append(time.perf_counter() - t)
            if r % 2 == 1:
                run_bare()
            log(f"  round {r:>3}: engine {engine_s[-1]:6.2f}s  bare {bare_s[-1]:6.2f}s")
    from fedcore.metrics import CLIENT_KEYS

    assert all(k in metrics for k in CLIENT_KEYS) and f"class_acc/{fed.data.num_classes - 1}" in metrics
    diff = max(float((fed.global_state[k] - bare.global_state[k]).abs().max()) for k in fed.global_state)
    rows = [Row("W1", "fedcore engine", engine_s, metrics["global_acc"], rss.mb, "full metric set every 5 rounds"),
            Row("W1", "hand-written loop", bare_s, bare.acc, rss.mb,
                f"same process, cohorts and seeds; final weights within {diff:.1e} of the engine's")]
    # each engine round over its bare twin (same cohort, back to back), then the median: on a shared
    # machine a ratio of medians can pair a loaded engine round with a quiet bare one
    ratios = {"W1 engine/bare": statistics.median(e / b for e, b in zip(engine_s, bare_s))}
    if flower:
        from benchmarks.flower_env import flower_python

        try:
            python = flower_python(log)
        except (OSError, subprocess.CalledProcessError) as e:  # no registry, no disk: say so, keep the rest
            rows.append(Row("W1", "flower", note=f"not run: could not create Flower's environment ({e})"))
            return rows, ratios
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "w1.pt"
            export(fed, data)
            for threads in (1, 0):
                log(f"W1: Flower, {'one torch thread' if threads == 1 else 'torch default threads'} per client actor")
                rows.append(run_flower(python, data, rounds, threads))
        best = rows[2]
        if best.seconds:
            ratios["flower/engine"] = statistics.median(best.seconds) / statistics.median(engine_s)
    return rows, ratios
