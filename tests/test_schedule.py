"""The launch's one-experiment schedule (sweeps/schedule.py): per-cell Optuna searches, each cell's
seed trials once its tuning has ended, the concurrency limit, save/restore, and one ASHA per cell.
These are Tune's own Searcher and Scheduler interfaces, driven here the way Tune drives them."""
import math

import optuna
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from sweeps.schedule import CELL, STAGE, CellPlan, CellScheduler, CellSearch, best_trial, evaluation_seeds

OBJ = ("worst_client_acc", "balancedness")


def plans():
    space = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    return [CellPlan("a", {"method.name": "fedavg", "partition.alpha": 0.1}, space, rounds=3),
            CellPlan("b", {"method.name": "fedavgw", "partition.alpha": 1.0}, space, rounds=3)]


def result(worst, bal=0.0, rounds=3, diverged=0.0):
    return {"round": float(rounds), "worst_client_acc": worst, "balancedness": bal, "diverged": diverged}


def test_tuning_then_seeds_per_cell_with_the_best_values(capsys):
    search = CellSearch(plans(), num_samples=2, seeds=2, objectives=OBJ, max_concurrent=2, log=print)
    a1, a2 = search.suggest("a1"), search.suggest("a2")
    assert (a1[CELL], a1[STAGE], a2[CELL], a2[STAGE]) == ("a", "tune", "a", "tune")
    assert a1["method.name"] == "fedavg" and 1e-4 <= a1["optimizer.lr"] <= 1e-1
    assert search.suggest("x") is None  # two running: the limit
    search.on_trial_complete("a1", result(0.2, 0.9))
    b1 = search.suggest("b1")  # a's tuning is not over (a2 runs): b's tuning starts
    assert (b1[CELL], b1[STAGE]) == ("b", "tune")
    search.on_trial_complete("a2", result(0.5, 0.1))
    s0 = search.suggest("s0")  # a's tuning is over: its seeds come before b's second tuning trial
    # seed runs are disjoint from the tuning trials' seed (0, the config's): none repeats the chosen trial
    assert "seed" not in a1 and "seed" not in a2
    assert (s0[CELL], s0[STAGE], s0["seed"]) == ("a", "seeds", 1)
    assert s0["optimizer.lr"] == a2["optimizer.lr"]  # a2 has the higher worst-client accuracy
    search.on_trial_complete("s0", result(0.4))
    s1 = search.suggest("s1")
    assert (s1[CELL], s1[STAGE], s1["seed"], s1["optimizer.lr"]) == ("a", "seeds", 2, a2["optimizer.lr"])
    search.on_trial_complete("s1", result(0.4))
    b2 = search.suggest("b2")
    assert (b2[CELL], b2[STAGE]) == ("b", "tune")
    search.on_trial_complete("b1", result(0.3, rounds=2))  # stopped early by ASHA
    search.on_trial_complete("b2", result(math.nan, diverged=1.0))
    assert search.suggest("z") is Searcher.FINISHED  # b: no trial finished, so no seeds
    out = capsys.readouterr().out
    assert "[1/2] a: tuning" in out and "[1/2] a: seeds with optimizer.lr=" in out
    assert "b: no tuning trial finished all 3 rounds; no seed runs" in out


def test_evaluation_seeds_never_include_the_tuning_seed():
    assert evaluation_seeds(3) == [1, 2, 3] and evaluation_seeds(2, tuning_seed=7) == [8, 9]
    # a cell whose config (here the profile's base, which the cell's overrides do not hold) tunes at
    # seed 5: its seed runs start after it
    cell = CellPlan("c", {"method.name": "fedavg"}, plans()[0].space, rounds=1, tuning_seed=5)
    search = CellSearch([cell], num_samples=1, seeds=2, objectives=OBJ, max_concurrent=1)
    t = search.suggest("t")
    assert "seed" not in t
    search.on_trial_complete("t", result(0.5, rounds=1))
    seeds = []
    for name in ("s1", "s2"):
        seeds.append(search.suggest(name)["seed"])
        search.on_trial_complete(name, result(0.5, rounds=1))
    assert seeds == [6, 7]


def test_best_trial_needs_all_rounds_and_breaks_ties_on_the_second_objective():
    results = {"t1": result(0.5, 0.1), "t2": result(0.5, 0.3), "t3": result(0.9, rounds=2),
               "t4": result(0.95, diverged=1.0), "t5": None, "t6": result(math.nan, 0.99)}
    assert best_trial(results, 3, OBJ) == "t2"
    assert best_trial({"t3": results["t3"], "t5": None}, 3, OBJ) is None


def test_save_and_restore_continue_the_same_stream(tmp_path):
    def drive(search, ids):
        out = []
        for i in ids:
            cfg = search.suggest(i)
            out.append(cfg)
            if isinstance(cfg, dict):
                search.on_trial_complete(i, result(cfg["optimizer.lr"]))
        return out

    first = CellSearch(plans(), num_samples=3, seeds=1, objectives=OBJ, sampler_seed=3, max_concurrent=1)
    head = drive(first, ["t0", "t1"])
    first.save(str(tmp_path / "state.pkl"))
    tail = drive(first, [f"t{i}" for i in range(2, 10)])
    restored = CellSearch(plans(), num_samples=3, seeds=1, objectives=OBJ, sampler_seed=99, max_concurrent=1)
    restored.restore(str(tmp_path / "state.pkl"))
    assert drive(restored, [f"t{i}" for i in range(2, 10)]) == tail
    stages = [(c[CELL], c[STAGE]) for c in head + tail if isinstance(c, dict)]
    assert stages == [("a", "tune")] * 3 + [("a", "seeds")] + [("b", "tune")] * 3 + [("b", "seeds")]
    assert tail[-1] is Searcher.FINISHED


def trial(tid, cell, stage):
    return Trial("fedcore", config={CELL: cell, STAGE: stage}, trial_id=tid, stub=True)


def test_each_cell_has_its_own_asha_and_seed_trials_are_never_stopped():
    sched = CellScheduler({"a": 4, "b": 4}, "worst_client_acc", grace_rounds=1)
    b1, a1, a2, s = trial("b1", "b", "tune"), trial("a1", "a", "tune"), trial("a2", "a", "tune"), trial("s", "a", "seeds")
    for t in (b1, a1, a2, s):
        sched.on_trial_add(None, t)

    def report(t, value):
        return sched.on_trial_result(None, t, {"round": 1.0, "worst_client_acc": value, "training_iteration": 1})

    assert report(b1, 0.9) == TrialScheduler.CONTINUE
    # one ASHA over both cells would stop a1 here, below b1's 0.9 at the same rung
    assert report(a1, 0.2) == TrialScheduler.CONTINUE
    assert report(a2, 0.1) == TrialScheduler.STOP  # below its own cell's a1
    assert report(s, 0.0) == TrialScheduler.CONTINUE
    assert set(sched.asha) == {"a", "b"}


def test_a_lost_completion_does_not_hang_the_launch():
    """If Tune never reports a tuning trial's end (e.g. an errored restore), the searcher settles the
    cell with what it has once nothing runs, instead of waiting forever."""
    search = CellSearch(plans()[:1], num_samples=2, seeds=1, objectives=OBJ, max_concurrent=2)
    search.suggest("t1"), search.suggest("t2")
    search.on_trial_complete("t1", result(0.3))
    search.live.pop("t2")  # its completion never arrives
    s = search.suggest("s")
    assert (s[STAGE], s["seed"]) == ("seeds", 1)
    search.on_trial_complete("s", result(0.3))
    assert search.suggest("end") is Searcher.FINISHED


@pytest.mark.parametrize("seeds", [1, 3])
def test_finished_count(seeds):
    search = CellSearch(plans(), num_samples=1, seeds=seeds, objectives=OBJ, max_concurrent=4)
    started = []
    while (cfg := search.suggest(f"t{len(started)}")) is not Searcher.FINISHED:
        if cfg is None:  # waiting on running trials: end them all
            for tid in list(search.live):
                search.on_trial_complete(tid, result(0.5))
            continue
        started.append(cfg)
    assert len(started) == 2 * (1 + seeds)


def test_an_errored_trial_that_finishes_when_run_again_counts():
    """Tune runs an errored trial again on --resume (same id): its late finish must choose the best
    and start the seeds, not be dropped because the trial was no longer running."""
    search = CellSearch(plans()[:1], num_samples=2, seeds=1, objectives=OBJ, max_concurrent=2, log=lambda m: None)
    t1, _ = search.suggest("t1"), search.suggest("t2")
    search.on_trial_complete("t1", None, error=True)
    search.on_trial_complete("t2", result(math.nan, diverged=1.0))
    assert search.cells[0].settled and search.cells[0].best is None
    search.on_trial_result("t1", result(0.4, rounds=1))  # running again: it counts against the limit
    assert set(search.live) == {"t1"}
    search.on_trial_complete("t1", result(0.4))
    s = search.suggest("s")
    assert (s[STAGE], s["optimizer.lr"]) == ("seeds", t1["optimizer.lr"])
    search.on_trial_complete("t1", result(0.9))  # a duplicate completion changes nothing
    assert search.cells[0].best == {"optimizer.lr": t1["optimizer.lr"]}


def test_asha_rungs_survive_a_resume_through_the_searcher_checkpoint(tmp_path):
    def fresh():
        sched = CellScheduler({"a": 4, "b": 4}, "worst_client_acc", grace_rounds=1)
        return sched, CellSearch(plans(), num_samples=3, seeds=1, objectives=OBJ, scheduler=sched)

    def report(sched, t, value):
        sched.on_trial_add(None, t)
        return sched.on_trial_result(None, t, {"round": 1.0, "worst_client_acc": value, "training_iteration": 1})

    sched, search = fresh()
    assert report(sched, trial("a1", "a", "tune"), 0.9) == TrialScheduler.CONTINUE
    search.save(str(tmp_path / "s.pkl"))
    cold, _ = fresh()
    assert report(cold, trial("a2", "a", "tune"), 0.1) == TrialScheduler.CONTINUE  # a fresh ASHA knows no rung
    sched2, search2 = fresh()
    search2.restore(str(tmp_path / "s.pkl"))
    assert search2.scheduler is sched2
    assert report(sched2, trial("a2", "a", "tune"), 0.1) == TrialScheduler.STOP  # below a1's recorded 0.9
    assert report(sched2, trial("b1", "b", "tune"), 0.1) == TrialScheduler.CONTINUE  # cell b recorded nothing


@pytest.mark.parametrize("objectives", [OBJ, OBJ[:1]])
def test_the_searcher_survives_the_pickling_tune_saves_an_experiment_with(objectives):
    """Tune pickles the searcher (with cloudpickle) when a Tuner is made; Optuna 5.1's NSGA-II holds
    a lock no pickle takes. A copy must suggest what the original suggests."""
    import pickle

    from ray import cloudpickle

    search = CellSearch(plans(), num_samples=2, seeds=1, objectives=objectives, sampler_seed=5, max_concurrent=2)
    copy = pickle.loads(cloudpickle.dumps(search))
    assert copy.suggest("x1") == search.suggest("x1")
