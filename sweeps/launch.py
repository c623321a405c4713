"""Launch a named study: every design cell tuned with the same budget (Optuna proposes, ASHA stops
the weak), then each cell's best configuration re-run with several seeds; prints the result table.

    python -m sweeps.launch --list
    python -m sweeps.launch fairness_paradox                       # smoke profile, offline
    python -m sweeps.launch fairness_paradox --profile local --data-dir ../shared/data/ag_news
    python -m sweeps.launch fairness_paradox --data 'tsv:reviews.tsv?text=body&label=stars' --set rounds=5
    python -m sweeps.launch rank_collapse --space 'optimizer.lr=loguniform(1e-4, 3e-3)' --dry-run
    python -m sweeps.launch fairness_paradox --dry-run --controls  # the plan, nothing runs
    python -m sweeps.launch fairness_paradox --resume              # continue an interrupted launch

Each launch is one Tune experiment, <storage>/<study>-<profile>-<time>/trials, whose actors are
reused from trial to trial (sweeps/schedule.py), and opens one MLflow parent run. Ctrl-C stops it
with its state saved; the same command with --resume continues the latest launch of that study,
profile and storage: finished trials are not run again, interrupted ones continue from their last
checkpoint, in the same MLflow runs.

Every cell's config is validated and every distinct data section loaded (untensorized) before Ray
starts, by --dry-run too; a bad study, profile, flag value, data file or partition gives one line
and exit status 2. A launch in which some cell has no finished trial exits with status 1; each
failed trial is one line naming its cell and its error file (the full traceback is there).
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ray import tune

from fedcore.metrics import BALANCEDNESS, GAP, LABELS, MEAN_CLIENT_ACC, SUMMARY_KEYS, WORST_CLIENT_ACC
from search_spaces.distributions import format_distribution
import sweeps.storage as storage_mod
from sweeps.guards import LaunchLock, check_address, check_resources, stop_like_ctrl_c, wait_until_placeable
from sweeps.schedule import CELL, STAGE
from sweeps.prune import PruneFinished
from sweeps.round_log import RoundCsv, RoundJson
from sweeps.trim import TrimFinished

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweeps.launch", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", help="a built-in study's name (see --list), or a study file (.yaml; "
                   "see docs/studies.md, or --print-study for a built-in one to copy)")
    p.add_argument("--list", action="store_true", help="print the studies, one per line, and exit")
    p.add_argument("--profile", help="built-in studies: smoke (default, offline), local or paper; a study file: "
                   "one of its profiles (default: the first it lists)")
    p.add_argument("--data", metavar="URI", help="the data every cell trains on, as fedcore.run takes it: "
                   "csv:PATH?text=COL&label=COL, tsv:PATH?..., hf:NAME, images:DIR, sklearn:digits, synthetic:topics "
                   "(a study whose cells cover several datasets then covers this one)")
    p.add_argument("--test-data", metavar="URI", help="a separate test set for --data (otherwise a fixed share of "
                   "--data is held out)")
    p.add_argument("--data-dir", help="shortcut for the layouts the profiles know: an AG News copy (train.csv, "
                   "test.csv, e.g. ../shared/data/ag_news), or ../shared/data itself for profiles over AG News and "
                   "DBpedia-14, or an image folder for the GPU profiles")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix any run-config field by its dotted name in every trial (e.g. rounds=5, "
                   "data.max_train_samples=2000); a key the study tunes is then fixed instead; repeatable")
    p.add_argument("--space", action="append", default=[], metavar="KEY=DIST",
                   help="tune KEY inside every cell with a distribution in Ray Tune's words: uniform(a, b), "
                   "loguniform(a, b), quniform(a, b, q), randint(a, b) (b excluded), lograndint(a, b), "
                   "qrandint(a, b, q), choice([x, y]); replaces the study's distribution for that key; repeatable")
    p.add_argument("--controls", action="store_true", help="add the study's control levels (fairness_paradox: "
                   "fm_full, fm_scratch; a study file: its controls: section)")
    p.add_argument("--cells", help="regular expression: run only the design cells whose name matches")
    p.add_argument("--num-samples", type=int, help="Optuna trials per design cell (profile value otherwise)")
    p.add_argument("--seeds", type=int, help="seeds for re-running each cell's best configuration")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: the study file's "
                   "budget.max_concurrent, else 2)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions share a GPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where trials train (profile value otherwise: "
                   "cuda for paper, cpu for the others)")
    p.add_argument("--storage", default=str(ROOT / "runs"), help="Ray Tune storage path or URI (default runs/)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<repo>/mlflow/mlflow.db; "
                   "or http://127.0.0.1:5000 for a server started with mlflow/server.sh)")
    p.add_argument("--address", help="Ray cluster address ('auto' inside a cluster); default: a local Ray")
    p.add_argument("--placement-timeout", type=float, default=600.0, metavar="S",
                   help="with --address: how long to wait for a node that can hold one trial (an autoscaler may "
                        "add one) before giving up (default 600 s)")
    p.add_argument("--tracking-wait", type=float, default=300.0, metavar="S",
                   help="at the end of a launch whose tracking store went down: how long to wait for it to answer "
                        "again before leaving its records in the launch's folder for --resume (default 300 s)")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of the Optuna sampler")
    p.add_argument("--resume", action="store_true", help="continue the latest interrupted launch of this study, "
                   "profile and storage (finished trials are kept, interrupted ones continue from their checkpoints)")
    p.add_argument("--dry-run", action="store_true", help="validate, load the data, and print the plan; run nothing")
    p.add_argument("--print-study", action="store_true", help="print the study as a study file (to copy and edit) "
                   "and exit")
    return p


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def flush_outbox(uri: str, study: str, parent: str, tune_dir: str, wait_s: float) -> int:
    """Send what the trials' tracker kept while the store was down (sweeps/outbox.py), waiting up to
    `wait_s` for the store; the number of records still kept."""
    from sweeps.tracking import TrialTracker

    tracker = TrialTracker(uri, study, parent, outbox_dir=tune_dir)
    if not tracker.outbox.pending:
        return 0
    print(f"note: sending {len(tracker.outbox.pending)} record(s) kept while MLflow was down", file=sys.stderr, flush=True)
    tracker.outbox.drain(tracker.apply, wait_s)
    return len(tracker.outbox.pending)


def close_parent(uri: str, parent: str, status: str) -> None:
    """The parent run's end, where the store answers (a launch that stopped because it did not is
    closed by its --resume)."""
    from sweeps.outbox import is_outage
    from sweeps.tracking import end_run

    try:
        end_run(uri, parent, status)
    except Exception as e:  # noqa: BLE001
        if not is_outage(e):
            raise
        print(f"note: MLflow at {uri} cannot be reached to mark launch {parent} {status}; --resume will",
              file=sys.stderr)


class Interrupted(Exception):
    """A Tune stage returned with trials unfinished (Ctrl-C / SIGUSR1): its state is saved."""


# keys the launch owns: --set cannot fix them
OWN_KEYS = {"seed": "tuning trials run at seed 0, the seed runs at seeds 1..n (--seeds n)", "device": "use --device",
            "data.source": "use --data", "data.test_source": "use --test-data"}


def user_settings(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """(--set values, --space distributions), by dotted key; ValueError on a malformed or clashing item."""
    from fedcore.config import parse_assignments
    from search_spaces.distributions import parse_space_items

    sets, space = parse_assignments(args.set), parse_space_items(args.space)
    for flag, keys in (("--set", sets), ("--space", space)):
        for key in keys:
            if key in OWN_KEYS:
                raise ValueError(f"{flag} {key}: the launch sets it ({OWN_KEYS[key]})")
    both = sorted(set(sets) & set(space))
    if both:
        raise ValueError(f"{both[0]} is both fixed (--set) and tuned (--space); give one")
    return sets, space


def plan(args, study, profile) -> list[dict[str, Any]]:
    """Validated (cell, base config, space) entries; raises ValueError before anything runs."""
    from fedcore.config import ConfigError
    from fedcore.resolve import make_config

    sets, extra_space = user_settings(args)
    cells = study.cells(profile)
    if args.cells:
        try:
            pattern = re.compile(args.cells)
        except re.error as e:
            raise ValueError(f"--cells {args.cells!r}: not a regular expression ({e}); e.g. --cells 'fedavg|fedprox'") from None
        cells = [c for c in cells if pattern.search(study.cell_name(c))]
        if not cells:
            raise ValueError(f"--cells {args.cells!r} matches no cell of {study.name}")
    # --space replaces a key where the study tunes it, and adds it everywhere where the study does not
    tuned_somewhere = {k for c in cells for k in study.space(c)}
    entries = []
    for cell in cells:
        name, design = study.cell_name(cell), study.cell_overrides(cell, profile)
        fixed = study.design_keys(cell, profile) if study.design_keys else set(design)
        for flag, keys in (("--set", sets), ("--space", extra_space)):
            for key in keys:
                if key in fixed:  # fixing or tuning it would turn several cells into one
                    raise ValueError(f"{flag} {key}: it is part of the study's design (cell {name} sets it to "
                                     f"{design[key]!r}); to change it, edit a copy of the study "
                                     f"(python -m sweeps.launch {study.name} --print-study)")
        # a cell's own rounds (a dataset's, in a profile over several) win over the profile's rule
        overrides = {"rounds": profile.rounds, **design, "device": args.device,
                     **zero_shot_overrides(study, profile), **sets}
        own = study.space(cell)
        space = {**{k: d for k, d in own.items() if k not in sets},
                 **{k: d for k, d in extra_space.items() if k in own or k not in tuned_somewhere}}
        overrides = {k: v for k, v in overrides.items() if k not in space}  # a tuned key is the space's
        try:
            # every config of this cell must be valid: the space's corners and each choice; the device
            # is checked where the trials run (a cluster's head may have no GPU), so the driver
            # validates the rest on the CPU
            cfg, *_ = [make_config(profile.base, **{**overrides, "device": "cpu", **p}) for p in probes(space)]
        except ConfigError as e:
            raise ValueError(f"cell {name}: {e}") from None
        entries.append({"cell": cell, "name": name, "overrides": overrides, "space": space, "cfg": cfg,
                        "protocol": protocol(cfg, space)})
    return entries


def probes(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Points of a space whose configs must all be valid: its lower corner (first: the plan's config),
    its upper corner, and each choice of a categorical with the rest at the lower corner."""
    low = {k: (d.low if hasattr(d, "low") else d.choices[0]) for k, d in space.items()}
    high = {k: (d.high if hasattr(d, "high") else d.choices[-1]) for k, d in space.items()}
    out = [low, high]
    for k, d in space.items():
        out += [{**low, k: c} for c in getattr(d, "choices", ())[1:-1]]
    return out


def check_data(study, entries: list[dict[str, Any]], dry_run: bool = False) -> dict[str, Any]:
    """Load each distinct data section once and check every cell against it (sweeps/preflight.py); a
    cell whose classes are bare numbers loses the zero-shot row (said once), and one whose method needs
    class names as prompts is refused. Returns {cell name: DataInfo}; ValueError otherwise."""
    from sweeps.preflight import check_data as load_and_check, note

    infos = load_and_check(entries, hub_optional=dry_run)
    skipped = []
    for e in entries:
        info = infos[e["name"]]
        if info is None or not info.bare_numbers or e["cfg"].teacher is None:
            continue
        if study.zero_shot_row and "teacher.name" in e["overrides"]:
            for key in ("teacher.name", "teacher.max_len"):
                e["overrides"].pop(key, None)
            skipped.append(e["name"])
        else:
            raise ValueError(f"cell {e['name']}: its teacher {e['cfg'].teacher.name!r} reads the class names as "
                             f"prompts, and {info.name}'s classes are bare numbers ({', '.join(info.class_names[:5])}"
                             f"{', ...' if len(info.class_names) > 5 else ''}); name them with class_names=a,b,... "
                             f"in the data URI")
    if skipped:
        note(f"no zero-shot row for {len(skipped)} cell(s): the data's classes are bare numbers, which a zero-shot "
             f"head cannot read as prompts; name them with class_names=a,b,... in the data URI")
    return infos


def protocol(cfg, space) -> str:
    """What every trial of a cell trains with (printed by --dry-run); a key the space tunes reads 'tuned'."""
    def val(key: str, value: Any) -> str:
        return "tuned" if key in space else f"{value:g}" if isinstance(value, float) else str(value)
    o, n = cfg.optimizer, cfg.partition.num_clients
    steps = f", at most {val('max_local_steps', cfg.max_local_steps)} steps" if cfg.max_local_steps else ""
    momentum = f" momentum {val('optimizer.momentum', o.momentum)}" if o.name == "sgd" else ""
    parts = [f"{n} clients ({cfg.partition.kind})", f"{cfg.clients_per_round or n} a round",
             f"batch {val('batch_size', cfg.batch_size)}",
             f"local epochs {val('local_epochs', cfg.local_epochs)}{steps}",
             f"{o.name} lr {val('optimizer.lr', o.lr)}{momentum}"]
    if cfg.model.tuning == "lora":
        lora = cfg.model.lora
        parts.append(f"LoRA r {lora.r} alpha {lora.alpha:g}" if lora.rank_profile == "homogeneous" and not lora.ranks
                     else f"LoRA ranks {lora.ranks or lora.rank_profile}")
    parts += [f"{k} {val('method.params.' + k, v)}" for k, v in sorted(cfg.method.params.items())]
    return ", ".join(parts)


def zero_shot_overrides(study, profile) -> dict[str, Any]:
    """The teacher that gives a study's zero-shot row: the profile's foundation model, read as a zero-shot
    head with the texts cut as the models see them (nothing where it has no zero-shot head)."""
    from fedcore.models import input_kind, is_clip

    fm = profile.foundation_model
    if not study.zero_shot_row or not (is_clip(fm) or input_kind(fm) == "text"):
        return {}
    return {"teacher.name": fm, "teacher.max_len": profile.base.get("data", {}).get("max_len", 64)}


def progress_line(ended: int, total: int, elapsed_s: float, ended_here: int) -> str:
    """'k/N trials ended, m min in, about r min left'. The estimate is this driver's rate so far, so
    after a --resume it counts only what ended since; tuning trials that ASHA stops end sooner, so
    early on it errs long."""
    line = f"{ended}/{total} trials ended, {elapsed_s / 60:.1f} min in"
    if total > ended and ended_here:
        line += f", about {elapsed_s / ended_here * (total - ended) / 60:.0f} min left"
    return line


class Progress(tune.Callback):
    """One line per finished trial: its cell and stage, objectives, its cell's best first objective
    so far, and how far the launch is (trials ended of those planned, time, an estimate of what is
    left)."""

    def __init__(self, rounds: dict[str, int], objectives: tuple[str, ...] = (WORST_CLIENT_ACC, BALANCEDNESS),
                 planned: int = 0):
        self.rounds, self.objectives, self.best, self.planned = rounds, objectives, {}, planned
        self._clock()

    def _clock(self) -> None:
        self.t0, self.ended_here = time.perf_counter(), 0

    def __setstate__(self, state):  # restored by --resume in a new driver: its own clock and rate
        self.__dict__.update(state)
        self._clock()

    def where(self, trials, trial) -> str:
        self.ended_here += 1
        ended = sum(t is trial or t.status in ("TERMINATED", "ERROR") for t in trials)
        total = max(self.planned, len(trials))
        return progress_line(ended, total, time.perf_counter() - self.t0, self.ended_here)

    @staticmethod
    def running(trials, trial) -> int:
        return sum(t.status == "RUNNING" and t is not trial for t in trials)

    @staticmethod
    def label(trial) -> str:
        return f"{trial.config.get(CELL, '?')} {trial.config.get(STAGE, '?')}"

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        label, first = self.label(trial), r.get(self.objectives[0], math.nan)
        best = self.best.get(label, -math.inf)
        if not math.isnan(first):
            self.best[label] = best = max(best, first)
        if r.get("diverged"):
            status = "diverged"
        elif r.get("round", 0) < self.rounds.get(trial.config.get(CELL), 0):
            status = f"stopped early at round {int(r.get('round', 0))}"
        else:
            status = "done"
        values = ", ".join(f"{SHORT.get(k, k)} {100 * r.get(k, math.nan):.1f}%" for k in self.objectives)
        print(f"  [{label}] trial {trial.trial_id}: {status}; {values}; best {SHORT.get(self.objectives[0], self.objectives[0])} "
              f"so far {100 * best:.1f}%; {self.running(trials, trial)} running; {self.where(trials, trial)}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        # one line, once Tune's retry (FailureConfig max_failures=1) failed too; the storage copy of
        # the error file outlives Ray's session folder, where trial.error_file lies
        kept = Path(trial.path, "error.txt") if trial.path and "://" not in trial.path else trial.error_file
        print(f"  [{self.label(trial)}] trial {trial.trial_id}: failed (retried once): {error_line(trial.error_file)} "
              f"(traceback: {kept}); {self.where(trials, trial)}", flush=True)


def trial_dirname(trial) -> str:
    """<cell>_<stage>_<trial id>: readable, and short enough for any file system (Tune's default
    spells out the sampled config)."""
    return f"{trial.config.get(CELL, 'trial')}_{trial.config.get(STAGE, '')}_{trial.trial_id}"


def error_line(path: str | None) -> str:
    """The exception line of a trial's error file (its traceback's last line)."""
    try:
        return last_line(Path(path).read_text(errors="replace"))
    except (OSError, TypeError):
        return "no error file"


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"


# the words of the result table and the reports
SHORT = LABELS
TRIALS = "trials"  # the launch's one Tune experiment, under its tune_dir


def cell_plans(entries) -> list:
    """The schedule's view of each cell. The tuning seed comes from the cell's whole config: a study
    file's base may set it, which the cell's overrides do not hold."""
    from sweeps.schedule import CellPlan

    return [CellPlan(e["name"], e["overrides"], e["space"], e["overrides"]["rounds"], tuning_seed=int(e["cfg"].seed))
            for e in entries]


def run_trials(entries, args, profile, study, resources, parent_run_id: str, tune_dir: str) -> list[dict[str, Any]]:
    """Every cell's tuning and seed trials as one Tune experiment whose actors are reused from trial
    to trial (see sweeps/schedule.py); one result row per cell. Raises Interrupted when it returns
    with trials unfinished (Ctrl-C), with its state saved for --resume."""
    from fedcore.tune import trainable_for
    from sweeps.schedule import CellScheduler, CellSearch, ran_all_rounds
    from sweeps.tracking import TrialTracker

    cells = cell_plans(entries)
    rounds = {c.name: c.rounds for c in cells}
    trainable = tune.with_resources(trainable_for(None), resources)
    path = f"{tune_dir}/{TRIALS}"
    if args.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = CellScheduler(rounds, study.asha_metric, profile.grace_rounds)
        tuner = tune.Tuner(
            trainable, param_space={"_base": profile.base},
            tune_config=tune.TuneConfig(
                search_alg=CellSearch(cells, args.num_samples, args.seeds, study.objectives, args.sampler_seed,
                                      args.max_concurrent, scheduler=scheduler),
                scheduler=scheduler,
                num_samples=len(cells) * (args.num_samples + args.seeds), reuse_actors=True,
                trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                storage_path=tune_dir, name=TRIALS, verbose=0, failure_config=tune.FailureConfig(max_failures=1),
                callbacks=[storage_mod.StorageWatch(tune_dir), TrimFinished(), PruneFinished(), RoundJson(), RoundCsv(), Progress(rounds, study.objectives, len(cells) * (args.num_samples + args.seeds)),
                           TrialTracker(args.tracking_uri, study.name, parent_run_id,
                                        {e["name"]: {**e["cell"], "name": e["name"]} for e in entries},
                                        {e["name"]: data_tags(e["data"]) for e in entries}, outbox_dir=tune_dir)]))
    grid = tuner.fit()
    if storage_mod.stopped:  # its trials stopped mid-write: some have no result to read (main says why)
        raise Interrupted(path)
    results = list(grid)
    if args.resume:
        from sweeps.tracking import drop_phantom_runs

        ids = {str(r.metrics.get("trial_id") or Path(r.path).name.rsplit("_", 1)[-1]) for r in results}
        dropped = drop_phantom_runs(args.tracking_uri, study.name, parent_run_id, ids)
        if dropped:
            print(f"note: {len(dropped)} MLflow run(s) of trials lost with the killed driver deleted (proposed "
                  f"again as new trials)", file=sys.stderr)
    mine = {e["name"]: [r for r in results if r.config.get(CELL) == e["name"]] for e in entries}
    tuned = {n: [r for r in rs if r.config.get(STAGE) == "tune"] for n, rs in mine.items()}
    # unfinished trials, or tuning trials never started: Ctrl-C (the searcher had trials left)
    if grid.num_terminated + grid.num_errors < len(grid) or any(len(t) < args.num_samples for t in tuned.values()):
        raise Interrupted(path)
    rows = []
    for e in entries:
        # a seed run counts where it ran every round without diverging (a failed one's last metrics
        # are no result)
        all_seeds = [r for r in mine[e["name"]] if r.config.get(STAGE) == "seeds"]
        seeded = [r for r in all_seeds if r.error is None and ran_all_rounds(r.metrics, rounds[e["name"]])]
        finished = [r for r in tuned[e["name"]] if ran_all_rounds(r.metrics, rounds[e["name"]])]
        failed = [r for r in mine[e["name"]] if r.error is not None]
        if not finished and failed and len(failed) == len(tuned[e["name"]]):
            rows.append({"cell": e["name"], "error": f"every trial failed, e.g. {last_line(str(failed[0].error))}"})
        elif not finished:
            rows.append({"cell": e["name"], "error": "no trial finished"})
        elif all_seeds and not seeded:
            why = next((last_line(str(r.error)) for r in all_seeds if r.error is not None), "they diverged")
            rows.append({"cell": e["name"], "error": f"no seed run finished ({len(all_seeds)} run; e.g. {why})"})
        elif not seeded:
            # the search ended before this cell's seeds: stopped between trials (--resume runs them), or its
            # only finished tuning trial was an errored one that --resume re-ran after the search had ended
            rows.append({"cell": e["name"], "error": "no seed runs (see --resume, or launch the cell again with --cells)"})
        else:
            rows.append(cell_row(e, seeded))
    return rows


def cell_row(entry, seeded) -> dict[str, Any]:
    """A cell's table row: the mean and sd over its seed runs' final metrics."""
    from sweeps.report_common import mean_sd

    chosen = {k: v for k, v in seeded[0].config.items() if k in entry["space"]}
    finals = [r.metrics for r in seeded]
    row: dict[str, Any] = {"cell": entry["name"], **entry["cell"], "best": chosen, "seeds": len(finals)}
    for key in SUMMARY_KEYS:
        row[key + "_stat"] = mean_sd(m.get(key) for m in finals)  # (mean, sd) with .n and the 95% interval
        row[key], row[key + "_sd"] = row[key + "_stat"]
    return row


def format_table(rows: list[dict[str, Any]], objective: str = WORST_CLIENT_ACC, protocol: str = "") -> str:
    """The launch's result table, in percent, with the metric words of the reports; `protocol`, the
    cells' eval protocol(s), is named under it."""
    from sweeps.report_common import INTERVAL_NOTE, pm, pm_head

    width = max([28, *(len(r["cell"]) + 2 for r in rows)])
    heads = ("mean acc %", "worst acc %", "gap %", "balancedness %")
    lines = [f"{'cell':<{width}}{'seeds':>6}  " + "  ".join(pm_head(h) for h in heads)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['cell']:<{width}}  {r['error']}")
            continue
        cols = "  ".join(pm(r[k + "_stat"]) for k in (MEAN_CLIENT_ACC, WORST_CLIENT_ACC, GAP, BALANCEDNESS))
        lines.append(f"{r['cell']:<{width}}{r['seeds']:>6}  {cols}")
    over = f"eval protocol {protocol}" if protocol else "its eval protocol"
    if protocol == "class_filtered":
        over += "; a client holding every class is scored on the whole test set, so where all do the gap is 0"
    lines.append(f"({INTERVAL_NOTE} (seeds disjoint from the tuning trials'), final round, {over}; in percent; each "
                 f"cell's best configuration by {objective}; which differences are resolved: python -m sweeps.report)")
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]], objective: str = WORST_CLIENT_ACC, protocol: str = "") -> None:
    print("\n" + format_table(rows, objective, protocol))


def prepare(args):
    """Validate everything a launch needs: (study, profile, plan entries, resources); ValueError otherwise.
    Each entry's "data" is its cell's DataInfo (sweeps/preflight.py)."""
    from sweeps.studies import get_profile
    from sweeps.study_file import StudyFileError

    try:
        study = find_study(args.study, args.profile, args.controls)
        args.profile = args.profile or next(iter(study.profiles))
        profile = get_profile(study, args.profile, args.data_dir, args.data, args.test_data)
    except (KeyError, StudyFileError) as e:
        raise ValueError(e.args[0]) from None
    if args.max_concurrent is None:
        args.max_concurrent = profile.options.get("max_concurrent") or 2
    for flag in ("num_samples", "seeds", "max_concurrent"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    args.num_samples = args.num_samples or profile.num_samples
    args.seeds = args.seeds or profile.seeds
    resources = {"cpu": args.cpus_per_trial if args.cpus_per_trial is not None else profile.cpus_per_trial,
                 "gpu": args.gpus_per_trial if args.gpus_per_trial is not None else profile.gpus_per_trial}
    check_resources(resources, local=False)  # finite and in range; whether they fit: below
    args.device = args.device or profile.base.get("device", "cpu")
    if args.device == "cuda":
        if resources["gpu"] <= 0:
            raise ValueError(f"profile {profile.name} trains on cuda: give each trial a GPU share (--gpus-per-trial 0.25) "
                             f"or train on the CPU (--device cpu)")
        import torch

        if not args.address and not torch.cuda.is_available():
            why = (f"profile {profile.name} trains on cuda and this machine has no GPU: run it on a Ray cluster "
                   f"(--address auto; see sweeps/cluster/README.md) or train on the CPU (--device cpu)")
            if not args.dry_run:
                raise ValueError(why)
            # the plan of a GPU profile is worth reading on a laptop before it goes to a cluster
            print(f"note: {why}; the plan below is what the launch would run there", file=sys.stderr)
    elif resources["gpu"] > 0 and args.gpus_per_trial is None:
        resources["gpu"] = 0.0  # the profile's GPU share is for cuda training
    check_resources(resources, local=not args.address, dry_run=args.dry_run)
    for flag in ("placement_timeout", "tracking_wait"):
        value = getattr(args, flag)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--{flag.replace('_', '-')} {value:g}: allowed seconds >= 0")
    entries = plan(args, study, profile)
    for name, info in check_data(study, entries, args.dry_run).items():
        next(e for e in entries if e["name"] == name)["data"] = info
    return study, profile, entries, resources


def estimate(entries, args, profile) -> str:
    """The plan's size in trial-rounds, and its time where the profile has a measured cost."""
    work = sum((args.num_samples + args.seeds) * e["overrides"]["rounds"] for e in entries)
    cost = profile.options.get("cost") or {}
    per = cost.get("seconds_per_trial_round")
    if not per:
        return f"{work} trial-rounds; no measured cost for profile {profile.name}, so no time estimate"
    minutes = work * per / args.max_concurrent / 60
    # the measured cost is a launch's wall time per planned trial-round, so it holds ASHA's stops and
    # Ray's start: a plan like the measured one takes about this long
    return (f"{work} trial-rounds; at the measured {per:g} s per planned trial-round with {args.max_concurrent} "
            f"at once: about {max(1, round(minutes))} min (measured: {cost.get('measured') or 'unstated'})")


def data_tags(info) -> dict[str, str]:
    """A cell's data as MLflow tags (the reports name the data and its classes from them)."""
    if info is None:
        return {}
    return {"data_name": info.name, "data_classes": ",".join(info.class_names), "data_kind": info.kind,
            "data_synthetic": str(info.synthetic).lower()}


def launch_tags(study, profile, entries) -> dict[str, str]:
    """The parent run's tags beyond the launch's own: its data, and the study file it ran."""
    infos = list(dict.fromkeys(e["data"] for e in entries if e["data"] is not None))
    tags = {"data_name": ", ".join(i.name for i in infos)} if infos else {}
    if len(infos) == 1:
        tags.update({k: v for k, v in data_tags(infos[0]).items() if k != "data_name"})
    if study.source:
        tags.update({"study_file": study.source, "study_sha": study.sha})
    if profile.options.get("report"):  # what the generic report tabulates and plots
        tags["report"] = json.dumps(profile.options["report"])
    planned = contrast_plan(study, profile, entries)
    if planned:  # what the report resolves (sweeps/contrasts.py)
        from sweeps.tracking import split_tag

        tags.update(split_tag("contrasts", json.dumps(planned, separators=(",", ":"))))
    return tags


def contrast_plan(study, profile, entries) -> list[dict[str, Any]]:
    """The study's declared contrasts as pairs of this launch's cells (sweeps/contrasts.py)."""
    from sweeps.contrasts import plan

    specs = profile.options.get("contrasts") or []
    if not specs or study.labels is None:
        return []
    return plan(specs, [(e["name"], study.labels(e["cell"])) for e in entries])


def print_study(args) -> int:
    """--print-study: the study file (a built-in's lies in studies/)."""
    from sweeps.study_file import StudyFileError

    try:
        study = find_study(args.study, args.profile, False)
    except (KeyError, StudyFileError) as e:
        return fail(e.args[0])
    if study.source is None:
        return fail(f"{study.name} is not written as a study file yet")
    print(Path(study.source).read_text(), end="")
    return 0


def find_study(name: str, profile: str | None, controls: bool):
    """A built-in study by name, or a study file by path (resolved for this profile and --controls)."""
    from sweeps.studies import get_study
    from sweeps.study_file import is_study_file, load_study

    if is_study_file(name):
        return load_study(name, profile, controls)
    return get_study(name, profile, controls)


def command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["python", "-m", "sweeps.launch", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dry_run:  # the hub's datasets from the local cache only: a dry run takes seconds, not retries
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from sweeps.studies import study_summaries
    from sweeps.tracking import TrackingError, check_tracking_uri, default_tracking_uri, find_launch

    if args.list:
        for name, summary in study_summaries().items():
            print(f"{name}\t{summary}")
        return 0
    if not args.study:
        return fail("name a study (python -m sweeps.launch --list shows them)")
    if args.print_study:
        return print_study(args)
    storage = args.storage.rstrip("/") if "://" in args.storage else str(Path(args.storage).resolve())
    tracking_uri = args.tracking_uri or default_tracking_uri()
    try:
        if "://" not in storage:
            from fedcore.paths import writable_dir

            writable_dir(storage, "--storage")
            problem = storage_mod.storage_problem(storage)
            if problem:
                raise ValueError(f"--storage {storage}: {problem}; free some space or pick another --storage")
        study, profile, entries, resources = prepare(args)
        check_tracking_uri(tracking_uri)
        check_address(args.address)
        launch = None
        if args.resume:
            launch = find_launch(tracking_uri, study.name, profile.name, storage)
            if launch is None:
                raise ValueError(f"--resume: no launch of {study.name} (profile {profile.name}) with storage "
                                 f"{storage} in {tracking_uri}; nothing to resume")
            # the plan is the original launch's: its flags, with this command's resume/address
            original = parser.parse_args(json.loads(launch.data.tags["argv"]))
            original.resume, original.address = True, args.address or original.address
            original.study = launch.data.tags.get("study_file") or original.study  # from any directory
            args = original
            study, profile, entries, resources = prepare(args)
            if study.sha != launch.data.tags.get("study_sha", study.sha):
                raise ValueError(f"--resume: the study file {study.source} changed since launch {launch.info.run_id} "
                                 f"(hash {launch.data.tags['study_sha']}, now {study.sha}); restore it, or start a "
                                 f"new launch")
            old = Path(launch.data.tags["tune_dir"])
            if "://" not in str(old) and not (old / TRIALS).exists() and any(old.glob("*-tune")):
                raise ValueError(f"--resume: launch {launch.info.run_id} was made by an earlier version (one Tune "
                                 f"experiment per cell, under {old}), which this one cannot continue; start a new launch")
    except (ValueError, TrackingError) as e:
        return fail(str(e))
    args.tracking_uri = tracking_uri

    trials = len(entries) * (args.num_samples + args.seeds)
    print(f"study {study.name}, profile {profile.name}: {profile.summary}"
          + ("; its data replaced by --data" if args.data else "; its data from --data-dir" if args.data_dir else ""))
    print(f"{len(entries)} design cells x ({args.num_samples} tuning + {args.seeds} seed trials) = {trials} trials; "
          f"objectives {', '.join(study.objectives)}; ASHA on {study.asha_metric}")
    print(estimate(entries, args, profile))
    planned = contrast_plan(study, profile, entries)
    if planned:
        print("contrasts the report resolves: " + "; ".join(
            f"{p['contrast']} ({len(p['pairs'])} pair{'s' * (len(p['pairs']) != 1)} x {', '.join(p['metrics'])})"
            for p in planned))
    from sweeps.schedule import evaluation_seeds  # (ray.tune: imported only once the plan is valid)

    tuning_seed = int(entries[0]["cfg"].seed) if entries else 0
    print(f"tuning trials at seed {tuning_seed}; each cell's seed runs at seeds "
          f"{', '.join(map(str, evaluation_seeds(args.seeds, tuning_seed)))}, the same in every cell (paired by seed)")
    for info in dict.fromkeys(e["data"] for e in entries if e["data"] is not None):
        print(f"data {info.line()}")
    for e in entries:
        print(f"  {e['name']:<28} rounds {e['overrides']['rounds']:>3}  tunes {', '.join(e['space']) or 'nothing'}")
        if args.dry_run:
            print(f"      {e['protocol']}")
            print(f"      space: {'; '.join(f'{k}={format_distribution(d)}' for k, d in e['space'].items()) or 'none'}")
    if args.dry_run:
        return 0

    import ray

    from sweeps.tracking import mark_abandoned, reopen_run, start_parent_run, summarize_launch

    storage_mod.stopped = None  # (main may run more than once in a process: the tests)

    # Tune's own tables would bury the progress lines below; verbose=0 silences them only with this
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # a dead server: one quick failure, then the outbox keeps the writes (MLflow's own retries block
    # the launch for minutes on each call)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # a failed trial is one line from Progress; Tune would also log its traceback, once per attempt
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):  # and the table says which did not complete
        logging.getLogger(name).setLevel(logging.CRITICAL)
    t0 = time.perf_counter()
    tune_dir = (launch.data.tags["tune_dir"] if launch is not None
                else f"{storage}/{study.name}-{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    lock = LaunchLock(tune_dir)
    try:
        lock.acquire(launch.info.run_id if launch is not None else tune_dir)
    except ValueError as e:
        return fail(f"--resume: {e}")
    rows, status, parent = [], "FAILED", None
    try:
        # Ray first: a cluster that cannot take the launch leaves no parent run behind
        if args.address:
            try:
                ray.init(address=args.address)
            except (ConnectionError, RuntimeError) as e:  # something listens there, but no Ray head we can join
                raise ValueError(f"--address {args.address}: cannot join a Ray cluster there "
                                 f"({' '.join(str(e).split())[:200]})") from None
            wait_until_placeable(resources, ray.nodes, args.placement_timeout)
        else:
            ray.init(num_cpus=max(2, int(resources["cpu"] * args.max_concurrent)), include_dashboard=False,
                     log_to_driver=False)
        stop_like_ctrl_c()  # after ray.init, which installs a SIGTERM handler of its own that aborts
        # a driver killed with SIGKILL could not close its runs: whatever no live driver holds is over
        mark_abandoned(tracking_uri, study.name, lambda run: LaunchLock(run.data.tags.get("tune_dir", "")).may_be_running())
        if launch is not None:
            parent = launch.info.run_id
            reopen_run(tracking_uri, parent, argv)
            print(f"resuming launch {parent} from {tune_dir}")
        else:
            _, parent = start_parent_run(tracking_uri, study.name, profile.name, argv, tune_dir, storage,
                                         tags=launch_tags(study, profile, entries))
        rows = run_trials(entries, args, profile, study, resources, parent, tune_dir)
        status = "FINISHED"
        kept = flush_outbox(tracking_uri, study.name, parent, tune_dir, args.tracking_wait)
        if kept:
            status = "UNRECORDED"
    except (Interrupted, KeyboardInterrupt):
        status = "KILLED"
    except OSError as e:  # Tune's own state save, when the storage failed between two looks of StorageWatch
        # (only where the storage itself now says so: another file refused is not the storage's fault)
        problem = storage_mod.storage_problem(tune_dir) if e.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT,
                                                                       errno.EACCES) else None
        if problem is None:
            raise
        status, storage_mod.stopped = "KILLED", storage_mod.stopped or problem
    except ValueError as e:  # the cluster cannot place a trial (wait_until_placeable)
        if parent is not None:
            raise
        return fail(str(e))
    finally:
        ray.shutdown()
        if parent is not None and status != "UNRECORDED":
            close_parent(tracking_uri, parent, status)
        lock.release()
    if status == "UNRECORDED":
        print_table(rows, study.objectives[0], ", ".join(sorted({e["cfg"].eval.protocol for e in entries})))
        return fail(f"the launch finished, but MLflow at {tracking_uri} did not answer again within "
                    f"{args.tracking_wait:.0f} s: {kept} record(s) of it wait in {tune_dir}/mlflow_outbox.jsonl. Once "
                    f"the store answers, the same command with --resume sends them (no trial runs again): "
                    f"{command(argv if '--resume' in argv else [*argv, '--resume'])}", code=1)
    if status == "KILLED" and parent is None:
        print("\ninterrupted before the launch began; nothing ran, nothing to resume", file=sys.stderr)
        return 130
    if status == "KILLED" and storage_mod.stopped:
        resume = argv if "--resume" in argv else [*argv, "--resume"]
        return fail(f"storage {tune_dir}: {storage_mod.stopped}. The launch stopped after "
                    f"{time.perf_counter() - t0:.0f}s with its state saved (finished trials are kept, running ones "
                    f"continue from their last checkpoint); free space or make it writable, then: {command(resume)}",
                    code=1)
    if status == "KILLED":
        resume = argv if "--resume" in argv else [*argv, "--resume"]
        print(f"\ninterrupted after {time.perf_counter() - t0:.0f}s; the state is saved under {tune_dir}.\n"
              f"continue with: {command(resume)}", file=sys.stderr)
        return 130
    protocol = ", ".join(sorted({e["cfg"].eval.protocol for e in entries}))
    print_table(rows, study.objectives[0], protocol)
    # one number per cell on the parent run, the one that picked each cell's best: its chart is the answer
    from sweeps.outbox import is_outage

    try:
        summarize_launch(tracking_uri, parent, rows, format_table(rows, study.objectives[0], protocol),
                         keys=(study.objectives[0],), seeds=False)
    except Exception as e:  # noqa: BLE001 - the table is printed; --resume writes it again
        if not is_outage(e):
            raise
        print(f"note: MLflow at {tracking_uri} went down again: the parent run lacks this table (--resume adds it)",
              file=sys.stderr)
    failed = [r["cell"] for r in rows if "error" in r]
    print(f"\nfinished in {time.perf_counter() - t0:.0f}s; Tune results under {tune_dir}")
    # mlflow ui is the full server in MLflow 3 (a job runner and its workers): server.sh starts a light one
    browse = ("bash mlflow/server.sh" if tracking_uri == default_tracking_uri() else
              "open it in your browser" if "://" in tracking_uri and tracking_uri.startswith("http") else
              f"bash mlflow/server.sh --store {tracking_uri}")
    print(f"MLflow: experiment {study.name!r}, parent run {parent} in {tracking_uri} (its description holds this "
          f"table); browse with `{browse}`; tables and plots: python -m sweeps.report {study.name}"
          + ("" if tracking_uri == default_tracking_uri() else f" --tracking-uri {tracking_uri}"))
    if failed:
        print(f"error: {len(failed)} of {len(rows)} cells have no result ({', '.join(failed[:5])}"
              f"{', ...' if len(failed) > 5 else ''}); see the failed trials above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
