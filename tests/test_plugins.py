"""Methods defined outside fedcore (docs/plugins.md), by both routes: an entry point of the group
`fedcore.methods` (a real *.dist-info directory on sys.path, found by the real importlib.metadata) and
a 'module:Class' name. The test methods live in tests/plugin_pkg (on sys.path here: pytest puts tests/
there), and are never part of fedcore.methods.METHODS."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import ray
import torch
from ray import tune

from fedcore.config import ConfigError
from fedcore.resolve import make_config
from fedcore.federation import Federation
from fedcore.methods import METHODS, get_method, method_class, plugins
from fedcore.methods.base import ClientUpdate, ServerState
from fedcore.run import main

TESTS = Path(__file__).resolve().parent
STEP = "plugin_pkg.fedavg_step:FedAvgStep"
BUILTINS = dict(METHODS)  # before any plugin is looked up
ENTRY_POINTS = """\
[fedcore.methods]
fedavg_step = plugin_pkg.fedavg_step:FedAvgStep
fedbroken = plugin_pkg.raises:Anything
fedavg = plugin_pkg.bad:Imposter
not_a_method = plugin_pkg.bad:NotAMethod
other_name = plugin_pkg.fedavg_step:FedAvgStep
"""
DIST = "fedcore-test-plugins"
TINY = {"data.source": "synthetic:topics?n=200&test=40", "data.max_len": 16, "data.vocab_size": 300,
        "model.name": "textcnn", "model.embed_dim": 8, "model.num_filters": 4, "partition.num_clients": 4,
        "batch_size": 16, "executor": "sequential", "torch_threads": 1, "seed": 5}


def install(root: Path) -> Path:
    """What pip would leave in site-packages for a distribution declaring ENTRY_POINTS (no code: the
    classes are in tests/plugin_pkg)."""
    info = root / "fedcore_test_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


@pytest.fixture(autouse=True)
def _fresh():
    plugins.clear_cache()
    threads = torch.get_num_threads()  # runs with torch_threads set it process-wide
    yield
    plugins.clear_cache()
    torch.set_num_threads(threads)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(install(tmp_path / "site")))


def test_the_plugin_formula_on_small_tensors():
    """w <- w + eta (sum_k p_k w_k - w): eta = 1 is FedAvg, eta = 0.5 lands halfway."""
    w = {"x": torch.tensor([1.0, 2.0])}
    ups = [ClientUpdate(0, 1, {"x": torch.tensor([3.0, 0.0])}), ClientUpdate(1, 3, {"x": torch.tensor([0.0, 6.0])})]
    fedavg, _ = get_method("fedavg").aggregate(w, ServerState(), ups)
    assert torch.allclose(fedavg["x"], torch.tensor([0.75, 4.5]))
    one, _ = get_method(STEP).aggregate(w, ServerState(), ups)
    half, _ = get_method(STEP, {"server_lr": 0.5}).aggregate(w, ServerState(), ups)
    assert torch.equal(one["x"], fedavg["x"])
    assert torch.allclose(half["x"], torch.tensor([0.875, 3.25]))


def test_entry_point_route_and_the_registry_stays_built_in(installed):
    cfg = make_config({}, **{"method.name": "fedavg_step", "method.params.server_lr": 0.5})
    from plugin_pkg.fedavg_step import FedAvgStep

    assert method_class(cfg.method.name) is FedAvgStep
    assert get_method("fedavg_step", cfg.method.params).params.server_lr == 0.5
    with pytest.raises(ConfigError, match=r"method.params.server_lr: Input should be greater than 0 .* for method "
                                          r"'fedavg_step'; its parameters: server_lr"):
        make_config({}, **{"method.name": "fedavg_step", "method.params.server_lr": 0})
    # a broken entry point does not matter to a config that does not name it, and one that claims a
    # built-in's name never replaces the built-in
    assert method_class("fedavg") is BUILTINS["fedavg"] and make_config({}, **{"method.name": "fedprox"})
    # what the properties over every registered method iterate is untouched by discovery
    main(["--list-methods"])
    assert METHODS == BUILTINS and FedAvgStep not in METHODS.values()
    with pytest.raises(ConfigError) as err:
        make_config({}, **{"method.name": "fedsgd"})
    assert "unknown method 'fedsgd'; allowed: fed_lpfm, fedavg, fedavg_step, fedavgw, fedbroken" in str(err.value)
    assert str(err.value).endswith(", or a method class as 'module:Class'")


def test_module_class_route():
    cfg = make_config({}, **{"method.name": STEP, "method.params": {"server_lr": 0.25}})
    assert method_class(STEP).__module__ == "plugin_pkg.fedavg_step" and cfg.method.params == {"server_lr": 0.25}
    assert not any("plugin_pkg" in m.__module__ for m in METHODS.values())


ORIGIN_EP = "entry point {} = {} of " + DIST
REFUSED = [
    ("plugin_pkg.missing:FedFoo", "module:Class",
     "cannot import module 'plugin_pkg.missing': no module named 'plugin_pkg.missing'"),
    ("plugin_pkg.fedavg_step:FedFoo", "module:Class", "module 'plugin_pkg.fedavg_step' has no attribute 'FedFoo'"),
    ("plugin_pkg.bad:NotAMethod", "module:Class",
     "plugin_pkg.bad:NotAMethod is not a subclass of fedcore.methods.Method"),
    ("plugin_pkg.bad:Imposter", "module:Class", "its name 'fedavg' clashes with the built-in method 'fedavg' "
                                                "(fedcore.methods.fedavg.FedAvg); a plugin needs a name of its own"),
    ("plugin_pkg.bad:Nameless", "module:Class",
     "plugin_pkg.bad:Nameless does not set its own `name` (it inherits 'fedavg')"),
    ("plugin_pkg.bad:HalfPersonal", "module:Class", "plugin_pkg.bad:HalfPersonal personalizes but does not implement "
                                                    "personal_stage() (its stage-2 optimizer and epochs)"),
    ("plugin_pkg.bad:DictRecord", "module:Class", "plugin_pkg.bad:DictRecord.Record is not a frozen dataclass (the "
                                                  "method's server record: @dataclass(frozen=True))"),
    ("fedbroken", ORIGIN_EP.format("fedbroken", "plugin_pkg.raises:Anything"),
     "importing module 'plugin_pkg.raises' failed: RuntimeError: plugin settings not found"),
    ("not_a_method", ORIGIN_EP.format("not_a_method", "plugin_pkg.bad:NotAMethod"),
     "plugin_pkg.bad:NotAMethod is not a subclass of fedcore.methods.Method"),
    ("other_name", ORIGIN_EP.format("other_name", "plugin_pkg.fedavg_step:FedAvgStep"),
     "its class's name is 'fedavg_step', not the entry point's name 'other_name'"),
]


@pytest.mark.parametrize("name, origin, reason", REFUSED, ids=[r[0] for r in REFUSED])
def test_an_unusable_plugin_is_one_config_error_line(name, origin, reason, installed):
    with pytest.raises(ConfigError) as err:
        make_config({}, **{"method.name": name})
    assert str(err.value) == f"invalid config: method.name: cannot use method {name!r} ({origin}): {reason}"


def rows_of(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.strip().splitlines()]


def test_list_methods_marks_plugins_and_broken_ones(installed, capsys):
    assert main(["--list-methods"]) == 0
    rows = rows_of(capsys.readouterr().out)
    builtin_rows = rows[:len(BUILTINS)]
    assert [r[0] for r in builtin_rows] == list(BUILTINS) and {r[3] for r in builtin_rows} == {"built-in"}
    plugin = {r[0]: r[1:] for r in rows[len(BUILTINS):]}
    assert list(plugin) == ["fedavg", "fedavg_step", "fedbroken", "not_a_method", "other_name"]
    assert plugin["fedavg_step"] == ["one LoRA rank", method_class(STEP).summary, f"plugin: {DIST} ({STEP})"]
    assert plugin["fedbroken"] == ["broken", "importing module 'plugin_pkg.raises' failed: RuntimeError: plugin "
                                   "settings not found", f"plugin: {DIST} (plugin_pkg.raises:Anything)"]
    assert plugin["fedavg"][:2] == ["broken", "clashes with the built-in method 'fedavg', which that name always means"]
    assert plugin["not_a_method"][0] == plugin["other_name"][0] == "broken"
    # a 'module:Class' is listed when --method names it; one that cannot be used exits 2 with its line
    assert main(["--list-methods", "--method", STEP]) == 0
    assert rows_of(capsys.readouterr().out)[-1] == [STEP, "one LoRA rank", method_class(STEP).summary, "module:Class"]
    assert main(["--list-methods", "--method", "plugin_pkg.bad:NotAMethod"]) == 2
    out = capsys.readouterr()
    assert rows_of(out.out)[-1][:2] == ["plugin_pkg.bad:NotAMethod", "broken"]
    assert out.err.strip().splitlines() == ["error: method.name: cannot use method 'plugin_pkg.bad:NotAMethod' "
                                            "(module:Class): plugin_pkg.bad:NotAMethod is not a subclass of "
                                            "fedcore.methods.Method"]
    assert main(["--list-methods", "--method", "fedbroken"]) == 2 and "RuntimeError" in capsys.readouterr().err


def test_fedcore_run_with_a_plugin(installed, tmp_path, capsys):
    args = ["--data", TINY["data.source"], "--clients", "4", "--rounds", "2", "--max-len", "16",
            "--set", "model.embed_dim=8", "--set", "model.num_filters=4", "--set", "data.vocab_size=300"]
    assert main([*args, "--method", "fedavg_step", "--set", "method.params.server_lr=0.5",
                 "--json-out", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "method    fedavg_step {'server_lr': 0.5}" in out and "per-client accuracy (final round):" in out
    assert [h["round"] for h in json.loads((tmp_path / "out.json").read_text())["history"]] == [1.0, 2.0]
    assert main([*args, "--method", "plugin_pkg.missing:FedFoo"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: invalid config: method.name: cannot use method 'plugin_pkg.missing:FedFoo' (module:Class): "
        "cannot import module 'plugin_pkg.missing': no module named 'plugin_pkg.missing'"]


def test_the_engine_runs_the_plugins_aggregate():
    """One real round: clients start from the same global weights with the same seed, so they send
    the same updates under both methods, and the plugin's global lands halfway to FedAvg's."""
    start, step, avg = (Federation(make_config({}, **TINY, rounds=1, **{"method.name": n}, **p))
                        for n, p in (("fedavg", {}), (STEP, {"method.params.server_lr": 0.5}), ("fedavg", {})))
    w0 = {k: v.clone() for k, v in start.global_state.items()}
    step.run_round(), avg.run_round()
    assert any(not torch.equal(avg.global_state[k], w0[k]) for k in w0)
    for k in w0:
        assert torch.allclose(step.global_state[k], w0[k] + 0.5 * (avg.global_state[k] - w0[k]), atol=1e-6), k


@pytest.fixture(scope="module")
def ray_with_plugins(tmp_path_factory):
    """A local Ray whose workers find the plugins the way a user's would: the distribution and the
    plugin package on PYTHONPATH, which the Ray processes inherit from the driver."""
    site = install(tmp_path_factory.mktemp("ray-site"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(site), str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))
        mp.setenv("FEDCORE_CACHE", str(tmp_path_factory.getbasetemp() / "fedcore-cache"))
        mp.syspath_prepend(str(site))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def test_a_ray_tune_trial_runs_a_plugin(ray_with_plugins, tmp_path):
    from fedcore.tune import run_config_of, trainable_for

    with pytest.raises(ValueError, match="RuntimeError: plugin settings not found"):
        trainable_for("fedbroken")  # refused on the driver, before any trial starts
    assert trainable_for("fedavg_step").__name__ == "fedavg_step"
    space = {"_base": {"rounds": 2}, **TINY, "method.params.server_lr": 0.5}
    tuner = tune.Tuner(
        tune.with_resources(trainable_for(None), {"cpu": 1}),
        param_space={**space, "method.name": tune.grid_search(["fedavg_step", STEP])},
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="plugins", verbose=0),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0, [str(r.error) for r in grid if r.error]
    direct = Federation(run_config_of({**space, "method.name": "fedavg_step"})).run()[-1]
    for r in grid:  # both names ran the plugin in a worker, and computed what the engine computes here
        assert r.metrics["round"] == 2.0 and r.metrics["diverged"] == 0.0
        for key in ("mean_client_acc", "worst_client_acc", "global_acc", "train_loss"):
            assert r.metrics[key] == direct[key], (r.config["method.name"], key)
