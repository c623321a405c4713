"""W1 on Flower's simulation engine (flwr 1.41, Message API, Ray backend), for benchmarks/w1.py.

Runs inside the benchmark's own Flower virtual environment (never the product's), on the data,
partition and initial weights the engine wrote to --data: 100 clients, FedAvg sampling 10 a round,
each client training the same TextCNN class (loaded from fedcore/models/textcnn.py) as the
hand-written loop does: fresh SGD (lr 0.01, momentum 0.9), batch 32, one epoch, batches cut to
their longest text. Global test accuracy every 5 rounds (and the last), on the server. Writes the
seconds of each round and the final accuracy to --out as JSON.

    python benchmarks/flower_w1.py --data w1.pt --rounds 20 --threads 1 --out flower.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

ROOT = Path(__file__).resolve().parents[1]
_CACHE: dict = {}


def textcnn_class():
    # the product's own TextCNN module file, without importing the rest of fedcore (not installed here)
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("w1_textcnn", ROOT / "fedcore" / "models" / "textcnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TextCNN


def load(path: str) -> dict:
    if path not in _CACHE:
        _CACHE[path] = torch.load(path, weights_only=True)
    return _CACHE[path]


def build(d: dict) -> torch.nn.Module:
    m = d["model"]
    return textcnn_class()(int(m["vocab"]), int(m["classes"]), int(m["embed_dim"]), int(m["filters"]),
                           tuple(int(k) for k in m["kernels"]), float(m["dropout"]))


def make_client_app(data_path: str, threads: int | None) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if threads:
            torch.set_num_threads(threads)
        d = load(data_path)
        if "model_obj" not in _CACHE:  # one resident model per actor, its state loaded per client
            _CACHE["model_obj"] = build(d)
        model = _CACHE["model_obj"]
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model.train()
        h = d["hyper"]
        opt = torch.optim.SGD(model.parameters(), lr=float(h["lr"]), momentum=float(h["momentum"]))
        idx = d["clients"][int(context.node_config["partition-id"])]
        order = idx[torch.randperm(len(idx))]
        batch, ids, lengths, labels = int(h["batch"]), d["ids"], d["lengths"], d["labels"]
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            loss = F.cross_entropy(model({"input_ids": ids[rows, :int(lengths[rows].max())]}), labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(idx)})})
        return Message(content=content, reply_to=msg)

    return app


def make_server_app(data_path: str, rounds: int, out: dict) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        d = load(data_path)
        model = build(d)
        model.load_state_dict(d["initial"])
        stamps: list[float] = []

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            # called after every round's aggregation (and once before round 1)
            metrics = None
            if server_round and (server_round % 5 == 0 or server_round == rounds):
                model.load_state_dict(arrays.to_torch_state_dict())
                model.eval()
                with torch.inference_mode():
                    pred = torch.cat([model({"input_ids": d["test_ids"][i:i + 256]}).argmax(-1)
                                      for i in range(0, len(d["test_ids"]), 256)])
                out["final_acc"] = float((pred == d["test_labels"]).float().mean())
                metrics = MetricRecord({"accuracy": out["final_acc"]})
            stamps.append(time.perf_counter())
            return metrics

        n = len(d["clients"])
        strategy = FedAvg(fraction_train=10 / n, fraction_evaluate=0.0, min_train_nodes=10, min_available_nodes=n)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(d["initial"]), num_rounds=rounds, evaluate_fn=evaluate)
        out["seconds_per_round"] = [b - a for a, b in zip(stamps, stamps[1:])]

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per client actor (0: torch's default)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    n = len(load(args.data)["clients"])
    out: dict = {"threads": args.threads or "torch default"}
    t0 = time.perf_counter()
    run_simulation(server_app=make_server_app(args.data, args.rounds, out),
                   client_app=make_client_app(args.data, args.threads or None), num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    out["wall_seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
