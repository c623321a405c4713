"""What a user sees in MLflow: child runs named by cell, stage and number, each config value once as
the trial used it, a resumed trial in its own run, the launch's table in the parent's description with
one metric per cell, and the light server of mlflow/server.sh. Real sqlite stores, real Tune runs
(one Ray session for the module), a real server."""
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import ray
from ray import tune

from fedcore.resolve import make_config
from sweeps.tracking import TrialTracker, note_text, start_parent_run, summarize_launch, summary_metric_name

ROOT = Path(__file__).resolve().parents[1]
# tiny: a trial is a second or two of training
BASE = {"data": {"source": "synthetic:topics?n=240&test=60", "max_len": 16, "vocab_size": 300},
        "model": {"name": "textcnn", "embed_dim": 8, "num_filters": 4},
        "partition": {"num_clients": 4, "alpha": 0.5}, "batch_size": 16, "max_local_steps": 6, "torch_threads": 1}


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the failing trainable below travels by value: workers cannot import this test module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def client_of(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def children(uri, parent):
    client = client_of(uri)
    exp = client.get_run(parent).info.experiment_id
    return {r.info.run_name: r for r in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")}


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        elif not isinstance(v, dict):
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else str(v)
    return out


@pytest.mark.slow
def test_a_launch_names_its_runs_logs_the_used_config_once_and_summarizes(ray_session, tmp_path, capsys):
    """One cell of the smoke profile through the launch's own Tune experiment (run_trials: CellSearch,
    the fedcore trainable, TrialTracker), then summarize_launch on its rows and printed table."""
    from sweeps.launch import build_parser, prepare, print_table, run_trials

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = build_parser().parse_args(["fairness_paradox", "--cells", "textcnn-a0.1", "--num-samples", "2",
                                      "--seeds", "2", "--storage", str(tmp_path), "--tracking-uri", uri])
    study, profile, entries, resources = prepare(args)
    [entry] = entries
    entry["overrides"]["rounds"] = 2  # the smoke profile's 3, shortened: the tracking is under test
    _, parent = start_parent_run(uri, study.name, profile.name, ["fairness_paradox", "--cells", "textcnn-a0.1"],
                                 str(tmp_path / "launch"), str(tmp_path), tags={"data_name": "synthetic topics"})
    rows = run_trials(entries, args, profile, study, resources, parent, str(tmp_path / "launch"))

    runs = children(uri, parent)
    cell = entry["name"]
    assert sorted(runs) == [f"{cell} / seed 1", f"{cell} / seed 2", f"{cell} / tune 1", f"{cell} / tune 2"]
    lrs = set()
    for name, run in runs.items():
        params, tags = run.data.params, run.data.tags
        assert tags["stage"] == f"{cell}/{'seeds' if 'seed' in name else 'tune'}" and tags["trial_name"]
        # once each, by dotted name: no `_base/...` twin, no sweep keys
        assert not [k for k in params if k.startswith("_") or "/" in k]
        # the value used: the cell's override (20) over the base's (3), the base over the default
        assert params["max_local_steps"] == str(entry["overrides"]["max_local_steps"]) == "20"
        assert params["batch_size"] == str(profile.base["batch_size"]) and params["rounds"] == "2"
        assert params["partition.alpha"] == "0.1" and params["model.name"] == "textcnn"
        lr = float(params["optimizer.lr"])
        assert 0.003 <= lr <= 0.1  # the tuned value, in the cell's space
        seed = int(name.split("seed ")[1]) if "seed" in name else 0
        assert params["seed"] == str(seed)
        # every RunConfig field, as make_config composes base, cell, tuned value and seed
        cfg = make_config(profile.base, **entry["overrides"], **{"optimizer.lr": lr, "seed": seed})
        assert params == flat(cfg.model_dump(mode="json"))
        lrs.add((name.split(" / ")[1].split()[0], params["optimizer.lr"]))
    # the seed runs re-run one tuning trial's value
    assert {lr for stage, lr in lrs if stage == "seed"} < {lr for stage, lr in lrs if stage == "tune"}

    # the summary: the printed table in the parent's description, one metric per cell and key
    capsys.readouterr()
    print_table(rows, study.objectives[0])
    table = capsys.readouterr().out
    summarize_launch(uri, parent, rows, table)
    run = client_of(uri).get_run(parent)
    note = run.data.tags["mlflow.note.content"]
    body = table.strip("\n")  # print_table's leading blank line is no part of the table
    assert f"```text\n{body}\n```" in note
    assert "**fairness_paradox**, profile `smoke`" in note and "data: synthetic topics" in note
    assert "sweeps.launch fairness_paradox --cells textcnn-a0.1" in note
    [row] = rows
    m = run.data.metrics
    for key in ("mean_client_acc", "worst_client_acc", "gap", "balancedness", "global_acc"):
        assert m[f"{cell}/{key}"] == pytest.approx(row[key])
    assert m[f"{cell}/seeds"] == 2 == row["seeds"]
    seeds = [r for n, r in runs.items() if "seed" in n]
    assert m[f"{cell}/worst_client_acc"] == pytest.approx(sum(r.data.metrics["worst_client_acc"] for r in seeds) / 2)


def test_a_resumed_trial_keeps_its_run_name_and_params(ray_session, tmp_path):
    """A trial that fails twice: retried in the launch (max_failures 1), then resumed by
    Tuner.restore (a new tracker, unpickled): one run all along, its name and params kept."""
    from fedcore.tune import run_trial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, parent = start_parent_run(uri, "ux_resume", "smoke", ["ux_resume"], str(tmp_path / "tune"), str(tmp_path))
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def trainable(config):
        if config["optimizer.lr"] == 0.01:
            n = len(list(attempts.iterdir()))
            (attempts / str(n)).touch()
            if n < 2:
                raise RuntimeError(f"attempt {n} fails on purpose")
        run_trial(config)

    tracker = TrialTracker(uri, "ux_resume", parent, cells={"c": {"model": "textcnn", "name": "c"}},
                           cell_tags={"c": {"data_name": "synthetic topics", "data_classes": "4"}})
    space = {"_base": BASE, "_cell": "c", "_stage": "tune", "rounds": 2, "optimizer.lr": tune.grid_search([0.01, 0.02])}
    grid = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(max_concurrent_trials=1),
                      run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="trials", verbose=0,
                                                failure_config=tune.FailureConfig(max_failures=1),
                                                callbacks=[tracker])).fit()
    assert grid.num_errors == 1 and len(list(attempts.iterdir())) == 2
    before = children(uri, parent)
    assert sorted(before) == ["c / tune 1", "c / tune 2"]  # started in this order
    assert before["c / tune 1"].info.status == "FAILED" and before["c / tune 2"].info.status == "FINISHED"

    grid = tune.Tuner.restore(str(tmp_path / "tune" / "trials"), trainable, resume_errored=True).fit()
    assert grid.num_errors == 0 and len(list(attempts.iterdir())) == 3
    after = children(uri, parent)
    assert sorted(after) == sorted(before)  # no third run, no new name
    for name, run in after.items():
        assert run.info.run_id == before[name].info.run_id and run.info.status == "FINISHED"
        assert run.data.params == before[name].data.params  # logged again, the same values, no error
        assert run.data.params["optimizer.lr"] == ("0.01" if name == "c / tune 1" else "0.02")
        assert run.data.params["rounds"] == "2" and not [k for k in run.data.params if k.startswith("_")]
        tags = run.data.tags
        # the cell's extra tags, as they are (not design factors: no cell. prefix)
        assert tags["data_name"] == "synthetic topics" and tags["data_classes"] == "4"
        assert "cell.data_name" not in tags and tags["cell.model"] == "textcnn" and tags["stage"] == "c/tune"
        steps = [m.step for m in client_of(uri).get_metric_history(run.info.run_id, "worst_client_acc")]
        assert steps == [1, 2]


def test_summary_metrics_of_any_cell_name_and_a_note_within_the_limit(tmp_path):
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH, _validate_metric_name

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, parent = start_parent_run(uri, "ux_summary", "local", ["ux_summary"], "/t", "/s",
                                 tags={"data_name": "ag_news", "data_classes": "World, Sports", "kind": "not this"})
    tags = client_of(uri).get_run(parent).data.tags
    assert tags["kind"] == "launch" and tags["data_name"] == "ag_news"  # extra tags never replace the launch's
    odd = ["..", ".", "...x", ".hidden", "-a", "a.b-c_d", "x" * 300, "fm_lora-a0.1-fedavg"]
    for cell in odd:
        _validate_metric_name(summary_metric_name(cell, "worst_client_acc"))  # raises where MLflow would
    assert summary_metric_name("fm_lora-a0.1-fedavg", "gap") == "fm_lora-a0.1-fedavg/gap"
    rows = [{"cell": c, "mean_client_acc": 0.8, "worst_client_acc": i / 10, "gap": math.nan, "seeds": 2}
            for i, c in enumerate(odd)] + [{"cell": "broken", "error": "no trial finished"}]
    table = "cell  seeds  worst\n" + "\n".join(f"{r['cell']}  2  {r.get('worst_client_acc')}" for r in rows)
    summarize_launch(uri, parent, rows, table)
    run = client_of(uri).get_run(parent)
    m = run.data.metrics
    assert m["fm_lora-a0.1-fedavg/worst_client_acc"] == pytest.approx(0.7)
    assert m["_../worst_client_acc"] == 0.0 and m["_.hidden/mean_client_acc"] == 0.8
    assert "fm_lora-a0.1-fedavg/gap" not in m  # NaN: no value rather than a hole in a chart
    assert m["broken/seeds"] == 0 and "broken/worst_client_acc" not in m
    note = run.data.tags["mlflow.note.content"]
    assert table in note and "1 without a result (broken)" in note and "data: ag_news (classes World, Sports)" in note
    summarize_launch(uri, parent, rows, table)  # again (a resumed launch): the same, no error
    # a table too long for a tag value is cut at a line, the code block closed
    long_table = "\n".join(f"cell{i:05d}  2  0.5" for i in range(2000))
    cut = note_text("s", tags, long_table, rows)
    assert len(cut) <= MAX_TAG_VAL_LENGTH and cut.count("```") == 2 and "more lines" in cut


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-o", "args=", "-s", str(sid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_server_sh_starts_light_and_prints_its_url(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.Popen(["bash", str(ROOT / "mlflow" / "server.sh"), "--port", str(port),
                             "--store", f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts", str(tmp_path / "art")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # the URL once /health answers
            if line.startswith("MLflow UI: "):
                break
            assert time.monotonic() < deadline and proc.poll() is None
        assert line.split()[2] == url
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert r.status == 200
        procs = session_processes(proc.pid)
        # the script, MLflow's launcher and one uvicorn worker; no job runner, no huey consumers
        assert len(procs) <= 4 and not [p for p in procs if "huey" in p or "_job_runner" in p], procs
        assert any(re.search(r"uvicorn .*--workers 1\b", p) for p in procs), procs
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    time.sleep(1)
    assert not session_processes(proc.pid)  # stopped, nothing left behind
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=2)
