import pytest

from fedcore.config import ConfigError
from fedcore.resolve import make_config
from fedcore.federation import Federation

SYN = "synthetic:topics?n=40&test=20"


@pytest.mark.parametrize("overrides, pattern", [
    ({"partition.alpha": 0}, r"partition\.alpha: must be > 0.*got 0"),
    ({"partition.alpha": -1.5}, r"partition\.alpha: must be > 0.*got -1\.5"),
    ({"method.name": "fedsgd"}, r"unknown method 'fedsgd'; allowed: .*fedavg.*fedprox"),
    ({"model.name": "textcn"}, r"model\.name: unknown model 'textcn'; allowed: textcnn"),
    ({"model.name": "minilm-l6", "model.lora.r": 512}, r"model\.lora: rank 512 is above the width 384.*allowed: 1\.\.384"),
    ({"data.source": "csv:/no/such/file.csv"}, r"data\.source: data file '/no/such/file\.csv' does not exist"),
    ({"data.source": "parquet:/x"}, r"data\.source: unknown data scheme 'parquet'.*allowed: hf, csv"),
    ({"data.source": "synthetic:topics?bogus=1"}, r"unknown parameter\(s\) \['bogus'\]"),
    ({"clients_per_round": 11, "partition.num_clients": 10}, r"clients_per_round: 11 is more than partition\.num_clients \(10\)"),
    ({"method.name": "fedavgw", "model.name": "textcnn"}, r"'fedavgw' aggregates LoRA factors.*allowed: model\.tuning 'lora'"),
    ({"model.name": "textcnn", "model.tuning": "lora"}, r"model\.tuning: 'lora' needs a transformer"),
    ({"method.name": "fedprox", "method.params": {"mu": -1}}, r"method\.params\.mu: .*greater than or equal to 0"),
    ({"eval.protocol": "global"}, r"eval\.protocol: .*'local_split', 'class_filtered' or 'pooled_local'"),
    ({"rounds": 0}, r"rounds: .*greater than or equal to 1"),
    ({"optimizer.lrr": 0.1}, r"optimizer\.lrr: unknown field \(did you mean 'lr'\?\); allowed: name, lr, momentum"),
    ({"device": "gpu"}, r"device: unknown device 'gpu'; allowed: cpu, cuda"),
    ({"partition.local_test_fraction": 0}, r"local_test_fraction: 0 leaves every client without a test split"),
    ({"seed": -1}, r"seed: .*greater than or equal to 0"),
])
def test_bad_config_raises_one_clear_error(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        make_config({}, **overrides)
    assert "\n" not in str(info.value)


def test_more_clients_than_samples_names_the_field():
    cfg = make_config({}, **{"data.source": SYN, "partition.num_clients": 100, "partition.kind": "iid"})
    with pytest.raises(ValueError, match=r"partition\.num_clients: 100 clients for 40 training samples; allowed: at most 40"):
        Federation(cfg)


def test_defaults_follow_the_model():
    assert make_config({}, **{"model.name": "textcnn"}).model.tuning == "full"
    assert make_config({}, **{"model.name": "minilm-l6"}).model.tuning == "lora"


@pytest.mark.parametrize("key, value", [("seed", 2), ("partition.alpha", 0.7), ("optimizer.lr", 0.5),
                                        ("method.name", "fedprox"), ("model.lora.r", 4), ("eval.protocol", "class_filtered")])
def test_fingerprint_changes_with_what_a_round_computes(key, value):
    a = make_config({}, seed=1)
    assert a.fingerprint() == make_config({}, seed=1).fingerprint()
    assert a.fingerprint() != make_config({}, **{"seed": 1, key: value}).fingerprint()


def test_fingerprint_ignores_budget_and_placement():
    a = make_config({}, seed=1)
    for key, value in (("rounds", 99), ("torch_threads", 1), ("cache_dir", "/tmp/x")):
        assert a.fingerprint() == make_config({}, **{"seed": 1, key: value}).fingerprint()


def test_the_schema_alone_leaves_registry_defaults_to_resolve_which_is_idempotent():
    from fedcore.config import ModelConfig, parse_config
    from fedcore.resolve import resolve

    parsed = parse_config({"model": {"name": "tiny-bert"}, "method": {"name": "fed_lpfm"}})
    assert parsed.model.tuning is None and parsed.teacher is None  # what only the registries know
    cfg = resolve(parsed)
    assert cfg.model.tuning == "lora" and cfg.teacher is not None and cfg.teacher.name == "minilm-l6"
    assert resolve(cfg) == cfg and resolve(cfg).fingerprint() == cfg.fingerprint()
    assert make_config().model.tuning == "full" and ModelConfig().tuning is None  # no shared default changed
    # a name only a registry can check is refused by resolve, worded as the schema's errors
    with pytest.raises(ConfigError, match=r"^invalid config: model.name: unknown model 'nope'"):
        make_config(model={"name": "nope"})
    assert parse_config(model={"name": "nope"}).model.name == "nope"
