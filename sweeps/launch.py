"""Launch a named study: every design cell tuned with the same budget (Optuna proposes, ASHA stops
the weak), then each cell's best configuration re-run with several seeds; prints the result table.

    python -m sweeps.launch --list
    python -m sweeps.launch fairness_paradox                       # smoke profile, offline
    python -m sweeps.launch fairness_paradox --profile local --data-dir ../shared/data/ag_news
    python -m sweeps.launch fairness_paradox --dry-run --controls  # the plan, nothing runs

Every cell's config is validated before Ray starts; a bad study, profile, flag value or data path
gives one line and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ray import tune

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweeps.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", help="study name (see --list)")
    p.add_argument("--list", action="store_true", help="print the studies, one per line, and exit")
    p.add_argument("--profile", default="smoke", help="smoke (default, offline), local or paper")
    p.add_argument("--data-dir", help="local AG News copy (train.csv, test.csv), e.g. ../shared/data/ag_news")
    p.add_argument("--controls", action="store_true", help="add the control model levels (fm_full, fm_scratch)")
    p.add_argument("--cells", help="regular expression: run only the design cells whose name matches")
    p.add_argument("--num-samples", type=int, help="Optuna trials per design cell (profile value otherwise)")
    p.add_argument("--seeds", type=int, help="seeds for re-running each cell's best configuration")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials running at once (default 2)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions share a GPU)")
    p.add_argument("--storage", default=str(ROOT / "runs"), help="Ray Tune storage path or URI (default runs/)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<repo>/mlflow/mlflow.db; "
                   "or http://127.0.0.1:5000 for a server started with mlflow/server.sh)")
    p.add_argument("--address", help="Ray cluster address ('auto' inside a cluster); default: a local Ray")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of the Optuna sampler")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    return p


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def plan(args, study, profile) -> list[dict[str, Any]]:
    """Validated (cell, base config, space) entries; raises ValueError before anything runs."""
    from fedcore.config import ConfigError, make_config

    cells = study.cells(args.controls, profile.alphas)
    if args.cells:
        cells = [c for c in cells if re.search(args.cells, study.cell_name(c))]
        if not cells:
            raise ValueError(f"--cells {args.cells!r} matches no cell of {study.name}")
    entries = []
    for cell in cells:
        overrides = {**study.cell_overrides(cell, profile.foundation_model), "rounds": profile.rounds(cell["alpha"])}
        space = study.space(cell, profile.max_local_epochs)
        probe = {k: (d.low if hasattr(d, "low") else d.choices[0]) for k, d in space.items()}
        try:
            make_config(profile.base, **overrides, **probe)  # a config of this cell must be valid
        except ConfigError as e:
            raise ValueError(f"cell {study.cell_name(cell)}: {e}") from None
        entries.append({"cell": cell, "name": study.cell_name(cell), "overrides": overrides, "space": space})
    return entries


class Progress(tune.Callback):
    """One line per finished trial, with the best worst-client accuracy so far."""

    def __init__(self, label: str, rounds: int):
        self.label, self.rounds, self.best = label, rounds, -math.inf
        self.running: set[str] = set()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        r = trial.last_result or {}
        worst = r.get("worst_client_acc", math.nan)
        if not math.isnan(worst):
            self.best = max(self.best, worst)
        if r.get("diverged"):
            status = "diverged"
        elif r.get("round", 0) < self.rounds:
            status = f"stopped early at round {int(r.get('round', 0))}"
        else:
            status = "done"
        print(f"  [{self.label}] trial {trial.trial_id}: {status}; worst {worst:.4f} "
              f"bal {r.get('balancedness', math.nan):.4f}; best worst so far {self.best:.4f}; "
              f"{len(self.running)} running", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        print(f"  [{self.label}] trial {trial.trial_id}: failed (see its error file)", flush=True)


def best_config(grid, rounds: int) -> dict[str, Any] | None:
    """The finished trial with the highest worst-client accuracy (balancedness breaks ties)."""
    finished = [r for r in grid if r.metrics and r.metrics.get("round") == rounds and not r.metrics.get("diverged")]
    if not finished:
        return None
    key = lambda r: (r.metrics.get("worst_client_acc", -1), r.metrics.get("balancedness", -1))  # noqa: E731
    return max(finished, key=key).config


def run_cell(entry, args, profile, study, resources, parent_run_id: str) -> dict[str, Any]:
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from fedcore.tune import trainable_for
    from sweeps.tracking import TrialTracker

    def callbacks(stage: str) -> list:
        return [Progress(f"{entry['name']} {stage}", rounds),
                TrialTracker(args.tracking_uri, study.name, parent_run_id, f"{entry['name']}/{stage}")]

    rounds = entry["overrides"]["rounds"]
    method = entry["overrides"]["method.name"]
    trainable = tune.with_resources(trainable_for(method), resources)
    fixed = {"_base": profile.base, **entry["overrides"]}
    # Optuna searches both objectives (the Pareto front is kept); ASHA stops on one scalar
    sampler = optuna.samplers.NSGAIISampler(seed=args.sampler_seed) if len(study.objectives) > 1 \
        else optuna.samplers.TPESampler(seed=args.sampler_seed)
    search = OptunaSearch(entry["space"], metric=list(study.objectives), mode=["max"] * len(study.objectives),
                          sampler=sampler)
    asha = ASHAScheduler(metric=study.asha_metric, mode="max", time_attr="training_iteration",
                         max_t=rounds, grace_period=min(profile.grace_rounds, rounds))
    storage = str(Path(args.storage).resolve()) if "://" not in args.storage else args.storage
    tuned = tune.Tuner(
        trainable, param_space=fixed,
        tune_config=tune.TuneConfig(search_alg=search, scheduler=asha, num_samples=args.num_samples,
                                    max_concurrent_trials=args.max_concurrent),
        run_config=tune.RunConfig(storage_path=storage, name=f"{study.name}-{entry['name']}-tune", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  callbacks=callbacks("tune")),
    ).fit()
    best = best_config(tuned, rounds)
    if best is None:
        return {"cell": entry["name"], "error": "no trial finished"}
    chosen = {k: v for k, v in best.items() if k in entry["space"]}
    seeded = tune.Tuner(
        trainable, param_space={**fixed, **chosen, "seed": tune.grid_search(list(range(args.seeds)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=args.max_concurrent),
        run_config=tune.RunConfig(storage_path=storage, name=f"{study.name}-{entry['name']}-seeds", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  callbacks=callbacks("seeds")),
    ).fit()
    finals = [r.metrics for r in seeded if r.metrics and not r.metrics.get("diverged")]
    row: dict[str, Any] = {"cell": entry["name"], **entry["cell"], "best": chosen, "seeds": len(finals)}
    for key in ("mean_client_acc", "worst_client_acc", "gap", "balancedness"):
        vals = [m[key] for m in finals if m.get(key) == m.get(key)]
        row[key] = statistics.fmean(vals) if vals else math.nan
        row[key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'cell':<28}{'seeds':>6}  {'mean acc':>15}  {'worst acc':>15}  {'gap':>15}  {'balancedness':>15}")
    for r in rows:
        if "error" in r:
            print(f"{r['cell']:<28}  {r['error']}")
            continue
        cols = "  ".join(f"{r[k]:.4f} ± {r[k + '_sd']:.4f}"
                         for k in ("mean_client_acc", "worst_client_acc", "gap", "balancedness"))
        print(f"{r['cell']:<28}{r['seeds']:>6}  {cols}")
    print("(mean ± sd over seeds of the final round; each cell's best configuration by worst-client accuracy)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from sweeps.studies import STUDIES, get_profile, get_study

    if args.list:
        for name, s in STUDIES.items():
            print(f"{name}\t{s.summary}")
        return 0
    if not args.study:
        return fail("name a study (python -m sweeps.launch --list shows them)")
    try:
        study = get_study(args.study)
        if args.data_dir is not None:
            missing = [f for f in ("train.csv", "test.csv") if not (Path(args.data_dir) / f).is_file()]
            if missing:
                return fail(f"--data-dir {args.data_dir!r} lacks {', '.join(missing)}")
        profile = get_profile(study, args.profile, args.data_dir)
    except KeyError as e:
        return fail(e.args[0])
    for flag in ("num_samples", "seeds", "max_concurrent"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            return fail(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    args.num_samples = args.num_samples or profile.num_samples
    args.seeds = args.seeds or profile.seeds
    resources = {"cpu": args.cpus_per_trial if args.cpus_per_trial is not None else profile.cpus_per_trial,
                 "gpu": args.gpus_per_trial if args.gpus_per_trial is not None else profile.gpus_per_trial}
    if resources["cpu"] <= 0 or resources["gpu"] < 0:
        return fail("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    try:
        entries = plan(args, study, profile)
    except ValueError as e:
        return fail(str(e))
    from sweeps.tracking import TrackingError, check_tracking_uri, default_tracking_uri

    args.tracking_uri = args.tracking_uri or default_tracking_uri()
    try:
        check_tracking_uri(args.tracking_uri)
    except TrackingError as e:
        return fail(str(e))

    trials = len(entries) * (args.num_samples + args.seeds)
    print(f"study {study.name}, profile {profile.name}: {profile.summary}")
    print(f"{len(entries)} design cells x ({args.num_samples} tuning + {args.seeds} seed trials) = {trials} trials; "
          f"objectives {', '.join(study.objectives)}; ASHA on {study.asha_metric}")
    for e in entries:
        print(f"  {e['name']:<28} rounds {e['overrides']['rounds']:>3}  tunes {', '.join(e['space'])}")
    if args.dry_run:
        return 0

    import ray

    from fedcore.tune import register_all
    from sweeps.tracking import end_run, start_parent_run

    t0 = time.perf_counter()
    _, parent = start_parent_run(args.tracking_uri, study.name, profile.name, list(argv if argv is not None else sys.argv[1:]))
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=max(2, int(resources["cpu"] * args.max_concurrent)), include_dashboard=False,
                 log_to_driver=False)
    register_all()
    rows, ok = [], False
    try:
        for i, entry in enumerate(entries, 1):
            print(f"[{i}/{len(entries)}] {entry['name']} ({time.perf_counter() - t0:.0f}s elapsed)", flush=True)
            rows.append(run_cell(entry, args, profile, study, resources, parent))
        ok = True
    finally:
        ray.shutdown()
        end_run(args.tracking_uri, parent, ok)
    print_table(rows)
    print(f"\nfinished in {time.perf_counter() - t0:.0f}s; Tune results under {args.storage}")
    print(f"MLflow: experiment {study.name!r}, parent run {parent} in {args.tracking_uri}; "
          f"browse with `mlflow ui --backend-store-uri {args.tracking_uri}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
