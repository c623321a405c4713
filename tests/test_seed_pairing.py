"""Seed pairing, which the reports' paired contrasts rely on: in two cells of one setting (the same
data, partition and cohort fields; a different model, method and optimizer), seed s gives the same
clients the same samples and samples the same cohort every round; another seed gives others. The
cells are fairness_paradox's, configured as the launch configures them."""
import numpy as np
import pytest

from fedcore.federation import Federation
from sweeps.contrasts import SETTING_KEYS, SETTING_PREFIXES
from tests.conftest import study_plan


@pytest.fixture(scope="module")
def cells():
    plan = {name: cfg for name, _, _, cfg in study_plan("fairness_paradox", "smoke")}
    # a partial cohort, so that the schedule has something to get wrong
    return {n: plan[n] for n in ("textcnn-a0.1-fedavg", "fm_lora-a0.1-fedavg", "fm_lora-a0.1-fedavgw")}


def _federation(cfg, seed):
    return Federation(cfg.model_copy(update={"seed": seed, "clients_per_round": 3, "rounds": 1}))


def _setting(cfg) -> dict:
    flat = cfg.model_dump()
    out = {f"data.{k}": v for k, v in flat["data"].items()}
    out.update({f"partition.{k}": v for k, v in flat["partition"].items()})
    out.update({k: flat["eval"][k.split(".")[1]] if k.startswith("eval.") else flat[k] for k in SETTING_KEYS})
    return out


def test_cells_of_one_setting_share_partition_and_cohorts(cells):
    configs = list(cells.values())
    # the cells differ in model, method and optimizer, and agree on what the contrasts call the setting
    assert len({c.model.name for c in configs}) == 2 and len({c.method.name for c in configs}) == 2
    assert all(_setting(c) == _setting(configs[0]) for c in configs)
    assert all(p.endswith(".") for p in SETTING_PREFIXES)
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
    fed = _federation(cells["textcnn-a0.1-fedavg"], 1)
    expected = fed.sample_clients(1)
    seen = []
    run = fed.executor.run

    def recording(f, cohort, round_):
        seen.append(list(cohort))
        return run(f, cohort, round_)
    fed.executor.run = recording
    fed.run_round()
    assert seen == [expected] and len(expected) == 3
