"""W2: FedIT on MiniLM + LoRA r 8 (query, value) on AG News, 10 clients, all of them every round, batch
16, at most 64 tokens: the sequential executor against the batched one (the cohort's adapters over
one frozen base in one pass), in one process, alternating which goes first.

On a CPU one local epoch (about 170 steps a client) costs minutes per client, so there each client
is capped at `max_local_steps` (10 with --quick, 20 otherwise) and the figures are seconds per
round at that cap; the two executors get the same clients, batches and steps. Their client updates
are compared (maximum absolute difference over all tensors, dropout off for the comparison).
With an NVIDIA GPU the same is run at DistilBERT size (randomly initialised, offline) with
`precision: bf16`, reporting clients per second for both executors and the fraction of the GPU's
bf16 peak each reaches (matrix-product FLOPs of the frozen base's linear layers, forward and the
backward through activations, over the padded tokens: an upper bound).
"""
from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import PeakRSS, Row, ag_news_sources

# dense bf16 peak (TFLOP/s) by device name, for the fraction-of-peak figure
BF16_PEAK = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def make(executor: str, steps: int, model: str = "minilm-l6", device: str = "cpu", dropout: float | None = None,
         max_train: int = 8000, precision: str = "fp32"):
    from fedcore.resolve import make_config
    from fedcore.federation import Federation

    extra = {} if dropout is None else {"model.encoder_dropout": dropout, "model.lora.dropout": dropout}
    cfg = make_config({}, **{
        **ag_news_sources(), "data.max_len": 64, "data.max_train_samples": max_train, "data.max_test_samples": 200,
        "partition.kind": "dirichlet", "partition.alpha": 1.0, "partition.num_clients": 10, "model.name": model,
        "model.tuning": "lora", "model.lora.r": 8, "method.name": "fedit", "optimizer.name": "adamw",
        "optimizer.lr": 5e-4, "batch_size": 16, "max_local_steps": steps, "local_epochs": 1, "rounds": 3,
        "eval.every": 1000, "executor": executor, "device": device, "torch_threads": 2, "precision": precision,
        **extra})
    return Federation(cfg)


def equality(steps: int) -> float:
    """Max |sequential - batched| over every client's updated tensors after one round, dropout off."""
    from fedcore.executors import BatchedLoRAExecutor

    fed = make("sequential", min(steps, 4), dropout=0.0, max_train=2000)
    cohort = fed.sample_clients(1)
    a = fed.train_cohort(cohort, 1)
    b = BatchedLoRAExecutor(fed.resident).run(fed.resident, fed.plan(cohort), 1, fed.server_state)
    return max(float((x.state[n] - y.state[n]).abs().max()) for x, y in zip(a, b) for n in x.state)


def train_seconds(fed) -> float:
    cohort = fed.sample_clients(fed.round + 1)
    t = time.perf_counter()
    fed.train_cohort(cohort, fed.round + 1)
    if fed.cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def run(quick: bool, log=print) -> tuple[list[Row], dict[str, float]]:
    steps, rounds = (10, 2) if quick else (20, 3)
    torch.set_num_threads(2)
    with PeakRSS() as rss:
        seq, bat = make("sequential", steps), make("batched", steps)
        log(f"W2: MiniLM + LoRA r 8, 10 clients x {steps} steps of 16 x <=64 tokens, {rounds} rounds, cpu")
        times = {"sequential": [], "batched": []}
        for r in range(rounds):
            order = (("sequential", seq), ("batched", bat)) if r % 2 == 0 else (("batched", bat), ("sequential", seq))
            for name, fed in order:
                times[name].append(train_seconds(fed))
                fed.round += 1
            log(f"  round {r + 1}: sequential {times['sequential'][-1]:6.2f}s  batched {times['batched'][-1]:6.2f}s")
    diff = equality(steps)
    note = f"cpu, {steps} steps/client; updates equal within {diff:.1e} (dropout off)"
    rows = [Row("W2", "sequential executor", times["sequential"], None, rss.mb, note),
            Row("W2", "batched executor", times["batched"], None, rss.mb, note)]
    ratios = {"W2 batched/sequential": statistics.median(b / s for b, s in zip(times["batched"], times["sequential"]))}
    if torch.cuda.is_available():
        gpu = gpu_rows(quick, log)
        rows += gpu
        # throughput, so > 1 means batched is faster (the goal there is at least 2)
        ratios["W2-gpu batched_throughput/sequential"] = min(gpu[0].seconds) / min(gpu[1].seconds)
    else:
        log("W2: no CUDA device here: the GPU figures (DistilBERT size, clients/s, fraction of bf16 peak) are not run")
    return rows, ratios


def gpu_rows(quick: bool, log=print, device: str = "cuda", model: str = "distilbert-base-random") -> list[Row]:
    """W2 at DistilBERT size in bf16 on the GPU: clients/s of both executors and their fraction of the
    device's bf16 peak (`device` and `model` let the code path run on a CPU with a tiny model)."""
    steps = 10 if quick else 30
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    log(f"W2-gpu: {model}, 10 clients x {steps} steps, bf16 autocast, on {name}")
    out = []
    for executor in ("sequential", "batched"):
        fed = make(executor, steps, model=model, device=device, precision="bf16")
        train_seconds(fed)  # warm-up (kernels, allocator)
        fed.round += 1
        secs = []
        for _ in range(2):
            secs.append(train_seconds(fed))
            fed.round += 1
        tokens = 10 * steps * 16 * 64  # upper bound: batches are cut to their longest text
        # forward 2 FLOPs per weight and token, backward through the activations 2 more (the frozen base
        # gets no weight gradients); embeddings are lookups, not products
        weights = sum(m.weight.numel() for m in fed.model.modules() if isinstance(m, torch.nn.Linear))
        flops = 4 * weights * tokens
        best = min(secs)
        frac = f", {flops / best / (peak * 1e12):.1%} of {name}'s bf16 peak" if peak else ""
        log(f"  {executor}: {min(secs):.2f} s/round, {10 / best:.1f} clients/s{frac}")
        out.append(Row("W2-gpu", f"{executor} executor", secs, None, None,
                       f"DistilBERT size, bf16, {10 / best:.1f} clients/s{frac}"))
    return out
