"""Every registered method as a Ray Tune trainable: one training iteration = one round.

The only module of fedcore that imports ray. A trial's config is a base run config (nested dict
under "_base") plus dotted overrides sampled by the search space, e.g.
{"_base": {...}, "partition.alpha": 0.1, "optimizer.lr": 3e-4}; other keys that start with "_" are
the sweep's own (a trial's design cell and stage) and not part of the run config. The trainable

- reports every metric of docs/metrics.md in every round (fedcore.federation carries the last
  evaluation between evaluation rounds),
- checkpoints through tune.Checkpoint every `_checkpoint_every` rounds (default 1) and at the
  last round, and resumes from tune.get_checkpoint() exactly where it stopped,
- ends a trial whose loss becomes NaN or inf with `diverged = 1` in its last report (accuracies
  NaN), without raising, so the sweep goes on.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune

from fedcore.config import RunConfig
from fedcore.resolve import make_config
from fedcore.federation import Federation
from fedcore.local import DivergedError
from fedcore.methods import METHODS, method_class

STATE_FILE = "fedcore_state.pt"


def run_config_of(config: dict[str, Any], method: str | None = None) -> RunConfig:
    """The validated RunConfig of a trial's Tune config."""
    overrides = {k: v for k, v in config.items() if not k.startswith("_")}
    if method is not None:
        overrides["method.name"] = method
    return make_config(config.get("_base", {}), **overrides)


def run_trial(config: dict[str, Any], method: str | None = None) -> None:
    """The Tune function trainable (call it from Tune, or through trainable_for)."""
    cfg = run_config_of(config, method)
    every = int(config.get("_checkpoint_every", 1))
    # which Ray node ran the round: on a cluster bound to one address (tests, a laptop) node_ip cannot tell
    where = {"node_id": ray.get_runtime_context().get_node_id()}
    fed = Federation(cfg)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            fed.restore(Path(directory) / STATE_FILE)
    while fed.round < cfg.rounds:
        try:
            metrics = fed.run_round()
        except DivergedError as e:
            last = dict(fed.history[-1]) if fed.history else {}
            nan = fed.nan_eval_metrics()
            tune.report({**last, **nan, "round": float(fed.round + 1), "diverged": 1.0, "diverged_reason": str(e), **where})
            return
        metrics = {**metrics, "diverged": 0.0, **where}
        if fed.round % every == 0 or fed.round == cfg.rounds:
            with tempfile.TemporaryDirectory() as directory:
                fed.save(Path(directory) / STATE_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)


def trainable_for(method: str | None) -> Callable[[dict[str, Any]], None]:
    """The trainable of one method, or with None ("fedcore") of whichever method a trial's config
    names under "method.name": one trainable lets a sweep over several methods reuse its actors."""
    if method is not None:
        # fail on the driver, not in every trial; a plugin is resolved again by name in each worker
        # (run_config_of), so its class never travels, only its name: workers import it themselves
        method_class(method)

    def trainable(config: dict[str, Any]) -> None:
        run_trial(config, method)

    trainable.__name__ = trainable.__qualname__ = method or "fedcore"
    return trainable


def register_all() -> list[str]:
    """Register every method's trainable with Tune under the method's name."""
    for name in METHODS:
        tune.register_trainable(name, trainable_for(name))
    return list(METHODS)
