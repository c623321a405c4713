"""One federated run without Ray.

    python -m fedcore.run --config configs/smoke_textcnn.yaml
    python -m fedcore.run --model minilm-l6 --method fedavgw --beta 0.5 --alpha 0.1 --rounds 5
    python -m fedcore.run --config my.yaml --set optimizer.lr=0.05 --set eval.protocol=class_filtered
    python -m fedcore.run --list-methods

Prints one line per round (round, mean, worst, gap, balancedness, seconds) and, at the end, a
per-client table. Exit status 2 on a bad config or unreadable data, 3 when training diverges.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from fedcore.metrics import BALANCEDNESS, GAP, GLOBAL_ACC, MEAN_CLIENT_ACC, WORST_CLIENT_ACC

if TYPE_CHECKING:  # imported where a run starts: --help and --list-methods stay light
    from fedcore.federation import Federation

# flag -> dotted config key
FLAGS = {
    "data": ("data.source", str, "data source URI (hf:, csv:, tsv:, images:, sklearn:digits, synthetic:topics)"),
    "test_data": ("data.test_source", str, "separate test-set URI"),
    "max_train": ("data.max_train_samples", int, "use at most this many training samples (stratified)"),
    "max_test": ("data.max_test_samples", int, "bound the global test set (stratified)"),
    "max_len": ("data.max_len", int, "tokens (or words for textcnn) per text"),
    "partition": ("partition.kind", str, "iid, dirichlet, classes, domain, domain_dirichlet or pooled"),
    "alpha": ("partition.alpha", float, "Dirichlet concentration (> 0)"),
    "clients": ("partition.num_clients", int, "number of clients"),
    "model": ("model.name", str, "textcnn, mlp, minilm-l6, tiny-bert, tiny-distilbert, tiny-vit, tiny-mixer, tiny-clip, timm:<name>, clip:<arch>/<tag>, or a hub id"),
    "tuning": ("model.tuning", str, "lora, full or head (transformers)"),
    "lora_r": ("model.lora.r", int, "LoRA rank"),
    "method": ("method.name", str, "federated method (see --list-methods)"),
    "mu": ("method.params.mu", float, "FedProx proximal weight"),
    "beta": ("method.params.beta", float, "FedAvgW inverse-size exponent"),
    "optimizer": ("optimizer.name", str, "sgd, adamw or adam"),
    "lr": ("optimizer.lr", float, "learning rate"),
    "rounds": ("rounds", int, "communication rounds"),
    "clients_per_round": ("clients_per_round", int, "clients sampled per round (default: all)"),
    "local_epochs": ("local_epochs", int, "local epochs per round"),
    "batch_size": ("batch_size", int, "local batch size"),
    "protocol": ("eval.protocol", str, "local_split, class_filtered or pooled_local"),
    "eval_every": ("eval.every", int, "evaluate every N rounds"),
    "seed": ("seed", int, "trial seed (partition, sampling, local shuffling)"),
    "device": ("device", str, "cpu or cuda"),
    "precision": ("precision", str, "fp32, or bf16 (autocast forward passes; for GPUs)"),
    "threads": ("torch_threads", int, "torch intra-op threads"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedcore.run", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config file (flags and --set override it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field by its dotted name, e.g. model.lora.alpha=32")
    for flag, (key, typ, help_) in FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, help=f"{help_} [{key}]")
    p.add_argument("--checkpoint", help="save the run's state here after every round")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint (which must exist)")
    p.add_argument("--json-out", help="write every round's metrics and the per-client table here")
    p.add_argument("--list-methods", action="store_true",
                   help="print the methods (built-in, plugins; with --method, that one too) and exit")
    p.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    return p


def overrides_from(args: argparse.Namespace) -> dict:
    out = {}
    for flag, (key, _, _) in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out[key] = value
    from fedcore.config import parse_assignments

    return {**out, **parse_assignments(args.set)}


def round_line(m: dict, total: int) -> str:
    def f(key):
        v = m.get(key, math.nan)
        return "  -   " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    return (f"round {int(m['round']):>3}/{total}  mean {f(MEAN_CLIENT_ACC)}  worst {f(WORST_CLIENT_ACC)}  "
            f"gap {f(GAP)}  bal {f(BALANCEDNESS)}  global {f(GLOBAL_ACC)}  "
            f"loss {m['train_loss']:.4f}  {m['seconds']:.1f}s")


def client_table(fed: Federation) -> list[dict]:
    """One row per active client: its number, split sizes, classes held and last accuracy."""
    d = fed.data
    acc = fed.client_acc
    y = d.train_labels.numpy()
    rows = []
    for k, idx in enumerate(d.client_train):
        rows.append({"client": d.client_ids[k], "train_n": len(idx), "test_n": len(d.client_test[k]),
                     "classes": len(set(y[idx].tolist())),
                     "acc": float(acc[k])})
    return rows


def list_methods(named: str | None) -> int:
    """One line per method: name, mixed LoRA ranks or not, summary, where it comes from. A plugin
    entry point that cannot be used is listed as broken with its reason; `named` (--method, e.g. a
    'module:Class') is checked and listed too, and exit status 2 says it cannot be used."""
    from fedcore.methods import list_methods as methods

    try:
        rows = methods(named)
    except ValueError as e:  # --method names nothing at all
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        if r.cls is None:
            print(f"{r.name}\tbroken\t{r.reason}\t{r.origin}")
        else:
            ranks = "mixed LoRA ranks" if r.cls.handles_mixed_ranks else "one LoRA rank"
            print(f"{r.name}\t{ranks}\t{r.cls.summary}\t{r.origin}")
    if any(r.name == named and r.cls is None for r in rows):
        from fedcore.methods import method_class

        try:
            method_class(named)
        except ValueError as e:  # the reason, as a run naming it reports it
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


def check_outputs(args: argparse.Namespace) -> None:
    """The files the run writes can be written, and --resume has a state to resume from, before any
    training (ValueError otherwise)."""
    from fedcore.paths import writable_file

    if args.resume and not args.checkpoint:
        raise ValueError("--resume continues from --checkpoint FILE; give it (or drop --resume)")
    if args.resume and not Path(args.checkpoint).is_file():
        raise ValueError(f"--resume: no checkpoint at {args.checkpoint!r}; run without --resume to start "
                         f"(--checkpoint then writes it after every round)")
    for flag in ("checkpoint", "json_out"):
        if getattr(args, flag):
            writable_file(getattr(args, flag), "--" + flag.replace("_", "-"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_methods:
        return list_methods(args.method)
    from fedcore.config import ConfigError
    from fedcore.resolve import load_config
    from fedcore.data import DataSourceError
    from fedcore.data.partition import PartitionError
    from fedcore.local import DivergedError

    try:
        cfg = load_config(args.config, overrides_from(args))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0
    try:
        check_outputs(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from fedcore.federation import Federation
    from fedcore.metrics import format_table

    t0 = time.perf_counter()
    try:
        fed = Federation(cfg)
    except (DataSourceError, PartitionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = fed.data
    print(f"data      {d.name}: {len(d.train_labels)} train / {len(d.test_labels)} test, {d.num_classes} classes")
    for note in d.notes:
        print(f"note      {note}")
    print(f"clients   {d.num_clients} active of {cfg.partition.num_clients} ({cfg.partition.kind}, "
          f"alpha={cfg.partition.alpha}); dropped (no data): {d.dropped_clients or 'none'}")
    print(f"model     {cfg.model.name} ({cfg.model.tuning}): {fed.trainable_params:,} trainable of "
          f"{fed.total_params:,} parameters")
    print(f"method    {cfg.method.name} {dict(fed.method.params)}; eval protocol {cfg.eval.protocol}; "
          f"executor {fed.executor.name} ({fed.executor_reason}); ready in {time.perf_counter() - t0:.1f}s")
    if args.resume:
        try:
            fed.restore(args.checkpoint)
        except Exception as e:  # a foreign, truncated or corrupt file: say so, lose nothing
            reason = str(e) if isinstance(e, ValueError) else f"not a readable fedcore state ({type(e).__name__})"
            print(f"error: cannot resume from {args.checkpoint}: {reason}", file=sys.stderr)
            return 2
        print(f"resumed   from {args.checkpoint} after round {fed.round}")

    def on_round(m):
        print(round_line(m, cfg.rounds), flush=True)
        if args.checkpoint:
            fed.save(args.checkpoint)

    try:
        fed.run(on_round=on_round)
    except DivergedError as e:
        print(f"diverged: {e}", file=sys.stderr)
        return 3
    rows = client_table(fed)
    print("\nper-client accuracy (final round):")
    print(format_table(rows, ["client", "train_n", "test_n", "classes", "acc"]))
    last = fed.history[-1] if fed.history else {}
    print(f"\nfinal: mean {last.get(MEAN_CLIENT_ACC, math.nan):.4f}  worst {last.get(WORST_CLIENT_ACC, math.nan):.4f}  "
          f"gap {last.get(GAP, math.nan):.4f}  balancedness {last.get(BALANCEDNESS, math.nan):.4f}  "
          f"global {last.get(GLOBAL_ACC, math.nan):.4f}  ({time.perf_counter() - t0:.0f}s)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"config": cfg.model_dump(mode="json"),
                                                   "history": fed.history, "clients": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
