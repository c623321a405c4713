"""One Tune experiment for a whole launch: every design cell's tuning trials, then its seed trials.

A launch used to run two Tuners per cell, and each Tuner starts its own trial actors: every trial
paid a fresh Ray worker's imports and model set-up (seconds), more than a smoke trial's training.
With one experiment, `reuse_actors` keeps the workers (and their imported libraries) for the
whole launch. Two pieces make one experiment behave like the per-cell stages:

- `CellSearch` (a Tune Searcher) runs one Optuna search per cell, in cell order, and as soon as a
  cell's tuning trials have all ended, queues that cell's seed trials with its best configuration.
  Tuning trials run at the tuning seed (the config's `seed`, 0); seed trials at `evaluation_seeds`,
  disjoint from it, so that no seed run repeats the trial it was chosen by (the winner's curse),
  and the same in every cell, so that cells of one setting pair seed by seed.
- `CellScheduler` gives each cell its own ASHA, so trials are only compared within their cell
  (cells differ in rounds and objectives' scale); seed trials are never stopped.

Every trial's config names its cell and stage under `_cell` and `_stage` (fedcore.tune ignores
keys that start with "_").
"""
from __future__ import annotations

import math
import pickle
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

CELL, STAGE = "_cell", "_stage"


def evaluation_seeds(n: int, tuning_seed: int = 0) -> list[int]:
    """The seeds of a cell's n seed runs: tuning_seed + 1 .. tuning_seed + n, never the tuning seed."""
    return [tuning_seed + 1 + i for i in range(n)]


@dataclass
class CellPlan:
    name: str
    fixed: dict[str, Any]  # the config every trial of the cell shares
    space: dict[str, Any]  # Optuna distributions over dotted keys
    rounds: int
    tuning_seed: int = 0  # the seed the tuning trials run at (the cell's full config's): seed runs avoid it
    # filled in while the launch runs
    suggested: int = 0
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # tuning trial id -> its suggested values
    results: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # tuning trial id -> last result
    best: dict[str, Any] | None = None  # chosen values of the space's keys
    seeds_suggested: int = 0
    settled: bool = False  # tuning over and best chosen (or none finished)


def ran_all_rounds(result: dict[str, Any] | None, rounds: int) -> bool:
    """A tuning trial that can be chosen: it ran every round without diverging (not stopped by ASHA)."""
    return bool(result) and result.get("round") == rounds and not result.get("diverged")


def best_trial(results: dict[str, dict[str, Any] | None], rounds: int, objectives: tuple[str, ...]) -> str | None:
    """The trial that ran all rounds without diverging with the highest first objective (the others
    break ties; NaN counts as lowest; the first suggested wins a full tie)."""
    finished = [t for t, r in results.items() if ran_all_rounds(r, rounds)]
    if not finished:
        return None

    def key(t):
        r = results[t]
        return tuple(-math.inf if r.get(k) is None or r.get(k) != r.get(k) else r[k] for k in objectives)
    return max(finished, key=key)


class NSGAII(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, made to survive Tune's pickling of the searcher: Optuna 5.1's genetic
    samplers hold a threading.Lock and no __getstate__, so Tune could not save the experiment at all.
    The lock guards a per-process cache, so a copy gets a lock of its own."""

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def say(message: str) -> None:
    """print, by a name that pickles: Ray swaps builtins.print for its own once a worker shows a
    progress bar, and a searcher holding the old print can then no longer be saved."""
    print(message)


class CellSearch(Searcher):
    """Per-cell Optuna searches, then per-cell seed re-runs, as one stream of suggestions."""

    def __init__(self, cells: list[CellPlan], num_samples: int, seeds: int, objectives: tuple[str, ...],
                 sampler_seed: int = 0, max_concurrent: int = 2, log: Callable[[str], None] = say,
                 scheduler: "CellScheduler | None" = None):
        super().__init__(metric=objectives[0], mode="max")
        # Tune checkpoints searchers but not schedulers: the searcher carries its scheduler's ASHA
        # rungs, so that after --resume trials are compared with those recorded before the interruption
        self.scheduler = scheduler
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per cell is noise

        self.cells, self.num_samples, self.seeds, self.objectives = cells, num_samples, seeds, objectives
        self.max_concurrent, self.log, self.t0 = max_concurrent, log, time.perf_counter()
        self.owner: dict[str, tuple[str, str]] = {}  # trial id -> (cell, stage), every trial suggested
        self.live: dict[str, tuple[str, str]] = {}  # the ones running
        self.optuna: dict[str, OptunaSearch] = {}
        for c in cells:
            # Optuna searches both objectives (the Pareto front is kept); ASHA stops on one scalar
            sampler = NSGAII(seed=sampler_seed) if len(objectives) > 1 \
                else optuna.samplers.TPESampler(seed=sampler_seed)
            self.optuna[c.name] = OptunaSearch(c.space, metric=list(objectives), mode=["max"] * len(objectives),
                                               sampler=sampler)

    # Tune's hooks -------------------------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # every cell's search has its own objectives

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if len(self.live) >= self.max_concurrent:
            return None
        for i, c in enumerate(self.cells):  # a settled cell's seeds go first: its row finishes soonest
            if c.settled and c.best is not None and c.seeds_suggested < self.seeds:
                if c.seeds_suggested == 0:
                    chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.best.items())
                    self.log(f"[{i + 1}/{len(self.cells)}] {c.name}: seeds with {chosen or 'the fixed config'}")
                seed = evaluation_seeds(c.seeds_suggested + 1, c.tuning_seed)[-1]
                c.seeds_suggested += 1
                return self._start(trial_id, c, "seeds", {**c.best, "seed": seed})
        for i, c in enumerate(self.cells):
            if c.suggested < self.num_samples:
                if c.suggested == 0:
                    self.log(f"[{i + 1}/{len(self.cells)}] {c.name}: tuning ({time.perf_counter() - self.t0:.0f}s elapsed)")
                c.suggested += 1
                c.values[trial_id] = self.optuna[c.name].suggest(trial_id)
                return self._start(trial_id, c, "tune", c.values[trial_id])
        if not self.live:
            for c in self.cells:  # a completion Tune never reported (an errored restore) must not hang the launch
                if not c.settled:
                    self._settle(c)
            if any(c.best is not None and c.seeds_suggested < self.seeds for c in self.cells):
                return self.suggest(trial_id)
            return Searcher.FINISHED
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner and trial_id not in self.live:
            self.live[trial_id] = self.owner[trial_id]  # an errored trial that Tune runs again (a retry, a resume)
        cell, stage = self.live.get(trial_id, (None, None))
        if stage == "tune" and trial_id not in self.by_name(cell).results:
            self.optuna[cell].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.owner:
            return
        self.live.pop(trial_id, None)
        cell, stage = self.owner[trial_id]
        if stage != "tune":
            return
        c = self.by_name(cell)
        if trial_id not in c.results:
            self.optuna[cell].on_trial_complete(trial_id, result=result, error=error)
        elif error or c.results[trial_id] is not None:
            return  # nothing new: it ended (or failed) before
        c.results[trial_id] = None if error else result  # a re-run of an errored trial may finish on resume
        if c.suggested >= self.num_samples and len(c.results) >= c.suggested and c.seeds_suggested == 0:
            self._settle(c)  # (again, when a late finish can still change the best before any seed runs)

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k not in ("log", "scheduler")}
        state["asha"] = None if self.scheduler is None else self.scheduler.asha
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        asha = state.pop("asha", None)
        self.__dict__.update(state)
        if asha is not None and self.scheduler is not None:
            # the restored Tuner's scheduler is this object's (one pickle holds both): refill it in place
            self.scheduler.asha = asha
        self.t0 = time.perf_counter()

    # --------------------------------------------------------------------------------------------
    def by_name(self, name: str) -> CellPlan:
        return next(c for c in self.cells if c.name == name)

    def _start(self, trial_id: str, cell: CellPlan, stage: str, values: dict[str, Any]) -> dict[str, Any]:
        self.live[trial_id] = self.owner[trial_id] = (cell.name, stage)
        return {**cell.fixed, **values, CELL: cell.name, STAGE: stage}

    def _settle(self, c: CellPlan) -> None:
        best = best_trial(c.results, c.rounds, self.objectives)
        c.best = None if best is None else dict(c.values[best])
        again, c.settled = c.settled, True
        if again and best is not None:
            self.log(f"  {c.name}: a tuning trial re-run after an error finished; best chosen again")
        elif best is None and not again:
            self.log(f"  {c.name}: no tuning trial finished all {c.rounds} rounds; no seed runs")


class CellScheduler(FIFOScheduler):
    """One ASHA per cell over its tuning trials; seed trials run to the end.

    Time is `round`, so that a resumed trial's rung milestones are the ones it had; the values
    recorded at each rung travel in CellSearch's checkpoint (Tune does not checkpoint schedulers)."""

    def __init__(self, rounds: dict[str, int], metric: str, grace_rounds: int):
        super().__init__()
        self.asha = {name: ASHAScheduler(metric=metric, mode="max", time_attr="round", max_t=r,
                                         grace_period=min(grace_rounds, r)) for name, r in rounds.items()}

    def _of(self, trial) -> TrialScheduler | None:
        if trial.config.get(STAGE) != "tune":
            return None
        return self.asha.get(trial.config.get(CELL))

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial):
        if (s := self._of(trial)) is not None:
            s.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        if (s := self._of(trial)) is not None:
            s.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        s = self._of(trial)
        return TrialScheduler.CONTINUE if s is None else s.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if (s := self._of(trial)) is not None:
            s.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        if (s := self._of(trial)) is not None:
            s.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"one ASHA per design cell ({len(self.asha)} cells)"
