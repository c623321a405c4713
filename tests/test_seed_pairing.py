"""Seed pairing, which the reports' paired contrasts rely on: in two cells of one setting (the same
data, partition and cohort fields; a different model, method and optimizer), seed s gives the same
clients the same samples and samples the same cohort every round; another seed gives others. The
cells are fairness_paradox's, configured as the launch configures them."""
import numpy as np
import pytest

from fedcore.federation import Federation
from sweeps.contrasts import cells_of
from sweeps.tracking import trial_params

NAMES = ("textcnn-a0.1-fedavg", "fm_lora-a0.1-fedavg", "fm_lora-a0.1-fedavgw")


@pytest.fixture(scope="module")
def cells():
    """name -> (its trial's Tune config at seed 1 as the launch builds it, its validated config)."""
    import argparse

    from sweeps.launch import plan
    from sweeps.studies import get_profile, get_study

    study = get_study("fairness_paradox", "smoke")
    profile = get_profile(study, "smoke")
    args = argparse.Namespace(controls=False, cells=None, device="cpu", set=[], space=[])
    entries = {e["name"]: e for e in plan(args, study, profile)}
    # a partial cohort, so that the schedule has something to get wrong
    return {n: ({"_base": profile.base, **entries[n]["overrides"], "optimizer.lr": 0.01, "clients_per_round": 3},
                entries[n]["cfg"]) for n in NAMES}


def _federation(cfg, seed):
    return Federation(cfg.model_copy(update={"seed": seed, "clients_per_round": 3, "rounds": 1}))


def test_the_report_pairs_these_cells_from_their_logged_params(cells):
    """The params a launch logs for these trials (trial_params) give one setting, so the report's
    contrasts pair them by seed; another partition setting does not."""
    records = [{"cell_name": n, "seed": s, "metrics": {}, "cell": {}, "params": trial_params({**tc, "seed": s})}
               for n, (tc, _) in cells.items() for s in (1, 2)]
    other = {**cells[NAMES[0]][0], "partition.num_clients": 7}
    records += [{"cell_name": "other", "seed": s, "metrics": {}, "cell": {}, "params": trial_params({**other, "seed": s})}
                for s in (1, 2)]
    found = cells_of(records)
    assert found[NAMES[0]]["setting"] == found[NAMES[1]]["setting"] == found[NAMES[2]]["setting"]
    assert found["other"]["setting"] != found[NAMES[0]]["setting"]
    assert records[0]["params"]["model.name"] != records[2]["params"]["model.name"]  # they do differ


def test_cells_of_one_setting_share_partition_and_cohorts(cells):
    configs = [cfg for _, cfg in cells.values()]
    # the cells differ in model, method and optimizer
    assert len({c.model.name for c in configs}) == 2 and len({c.method.name for c in configs}) == 2
    by_seed = {}
    for seed in (1, 2):
        feds = [_federation(cfg, seed) for cfg in configs]
        first = feds[0]
        for other in feds[1:]:
            assert first.data.num_clients == other.data.num_clients
            for k in range(first.data.num_clients):
                assert np.array_equal(first.data.client_train[k], other.data.client_train[k])
                assert np.array_equal(first.data.client_test[k], other.data.client_test[k])
            assert [first.sample_clients(t) for t in range(1, 7)] == [other.sample_clients(t) for t in range(1, 7)]
        by_seed[seed] = ([c.copy() for c in first.data.client_train], [first.sample_clients(t) for t in range(1, 7)])
    # another seed: another partition and another cohort schedule
    assert any(not np.array_equal(a, b) for a, b in zip(by_seed[1][0], by_seed[2][0]))
    assert by_seed[1][1] != by_seed[2][1]


def test_the_round_samples_that_cohort(cells):
    """run_round trains the cohort sample_clients names (what the pairing claims is what runs)."""
    fed = _federation(cells["textcnn-a0.1-fedavg"][1], 1)
    expected = fed.sample_clients(1)
    seen = []
    run = fed.executor.run

    def recording(res, plan, round_, server_state):
        seen.append([p.client for p in plan])
        return run(res, plan, round_, server_state)
    fed.executor.run = recording
    fed.run_round()
    assert seen == [expected] and len(expected) == 3
