"""A launch on the user's data (--data, --test-data), --set and --space: every bad input is one line
and exit status 2 before Ray starts; the plan follows the data and the flags."""
import re
import tarfile

import pytest

from sweeps.launch import main


@pytest.fixture
def tsv(tmp_path):
    """Three string-labelled classes under other column names, one empty and one very long text."""
    rows = ["review\tverdict"]
    words = {"good": "great lovely superb", "bad": "awful broken poor", "meh": "fine okay average"}
    for i in range(60):
        label = ("good", "bad", "meh")[i % 3]
        rows.append(f"{words[label]} item {i}\t{label}")
    rows += ["\tmeh", " ".join(["long"] * 3000) + "\tgood"]
    path = tmp_path / "reviews.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def run(args, capsys) -> tuple[int, str, str]:
    import ray

    code = main(args)
    out = capsys.readouterr()
    assert not ray.is_initialized()
    return code, out.out, out.err


def test_dry_run_on_a_tsv_follows_its_classes(tsv, capsys):
    code, out, _ = run(["fairness_paradox", "--dry-run", "--data", f"tsv:{tsv}?text=review&label=verdict",
                        "--cells", "textcnn-a0.1"], capsys)
    assert code == 0
    assert "data reviews: 62 train" not in out  # a share of the file is held out as the test set
    line = next(ln for ln in out.splitlines() if ln.startswith("data "))
    assert line.startswith("data reviews: ") and "(text), 3 classes (bad, good, meh)" in line


def test_set_fixes_a_field_and_takes_it_out_of_the_space(capsys):
    code, out, _ = run(["fairness_paradox", "--dry-run", "--cells", "fm_lora-a0.1-fedavgw", "--set", "rounds=7",
                        "--set", "optimizer.lr=0.001"], capsys)
    assert code == 0
    cell = next(ln for ln in out.splitlines() if "fm_lora-a0.1-fedavgw" in ln)
    assert "rounds   7" in cell and "tunes method.params.beta" in cell and "optimizer.lr" not in cell
    assert "adamw lr 0.001" in out


def test_space_replaces_and_extends_the_tuned_distributions(capsys):
    code, out, _ = run(["fairness_paradox", "--dry-run", "--cells", "textcnn-a1", "--space",
                        "optimizer.lr=loguniform(1e-3, 1e-1)", "--space", "batch_size=choice([8, 32])"], capsys)
    assert code == 0
    assert "space: optimizer.lr=loguniform(0.001, 0.1); batch_size=choice([8, 32])" in out


def test_space_replaces_a_key_only_where_the_study_tunes_it(capsys):
    code, out, _ = run(["fairness_paradox", "--dry-run", "--cells", "fm_lora-a1", "--space",
                        "method.params.beta=uniform(0.0, 5.0)"], capsys)
    assert code == 0
    spaces = [ln for ln in out.splitlines() if ln.strip().startswith("space:")]
    assert spaces == ["      space: optimizer.lr=loguniform(5e-05, 0.003)",
                      "      space: optimizer.lr=loguniform(5e-05, 0.003); method.params.beta=uniform(0, 5)"]


def test_bare_number_classes_drop_the_zero_shot_row_with_one_note(tmp_path, capsys):
    path = tmp_path / "nums.csv"
    path.write_text("text,label\n" + "".join(f"words {i % 2} here,{i % 2}\n" for i in range(40)))
    code, out, err = run(["fairness_paradox", "--dry-run", "--data", f"csv:{path}", "--cells", "fm_lora-a1-fedavg$"],
                         capsys)
    assert code == 0 and "2 classes (0, 1)" in out
    assert err.strip().splitlines() == [
        "note: no zero-shot row for 1 cell(s): the data's classes are bare numbers, which a zero-shot head cannot "
        "read as prompts; name them with class_names=a,b,... in the data URI"]


def _bad_inputs(tmp_path, tsv):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar archive at all" * 10)
    no_images = tmp_path / "none.tar"
    with tarfile.open(no_images, "w"):
        pass
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "cat" / "a.jpg").write_text("not a jpeg")
    nums = tmp_path / "nums.csv"
    nums.write_text("text,label\n" + "".join(f"words {i % 2},{i % 2}\n" for i in range(40)))
    uri = f"tsv:{tsv}?text=review&label=verdict"
    return [
        (["fairness_paradox", "--data", f"tsv:{tsv}?text=body&label=verdict"],
         "column(s) ['body'] not found; columns are ['review', 'verdict']"),
        (["fairness_paradox", "--data", f"{uri}&class_names=x,y"], "class_names: 2 names (x, y) for 3 distinct labels"),
        (["fairness_paradox", "--data", f"csv:{empty}"], "has no rows below its header"),
        (["fairness_paradox", "--data", f"images:{broken}"], "is neither a folder nor a tar archive"),
        (["fairness_paradox", "--data", f"images:{no_images}"], "none.tar: no image files"),
        (["fairness_paradox", "--data", f"images:{tmp_path / 'imgs'}"], "cat/a.jpg is not a readable image"),
        (["fairness_paradox", "--data", "csv:/no/such.csv"], "--data: data file '/no/such.csv' does not exist"),
        (["fairness_paradox", "--data", uri, "--test-data", "tsv:/no/t.tsv"], "--test-data: data file '/no/t.tsv'"),
        (["fairness_paradox", "--test-data", uri], "--test-data needs --data"),
        (["fairness_paradox", "--data", uri, "--data-dir", str(tmp_path)], "either as --data URI"),
        (["fairness_paradox", "--set", "method.name=fedprox"], "--set method.name: it is part of the study's design"),
        (["fairness_paradox", "--set", "seed=3"], "--set seed: the launch sets it"),
        (["fairness_paradox", "--set", "data.source=csv:x"], "use --data"),
        (["fairness_paradox", "--set", "rounds"], "--set expects KEY=VALUE"),
        (["fairness_paradox", "--set", "optimizer.lrr=0.1"], "did you mean 'lr'?"),
        (["fairness_paradox", "--space", "optimizer.lr=loguniform(1e-2)"], "loguniform takes 2 numbers"),
        (["fairness_paradox", "--space", "optimizer.lr=gauss(0, 1)"], "is not a distribution; allowed: uniform(...)"),
        (["fairness_paradox", "--space", "local_epochs=randint(3, 3)"], "[3, 3) is empty"),
        (["fairness_paradox", "--set", "rounds=4", "--space", "rounds=randint(2, 5)"], "both fixed (--set) and tuned"),
        (["fairness_paradox", "--set", "partition.num_clients=5000"], "partition"),
        (["fed_lpfm", "--data", f"csv:{nums}", "--cells", "fed_lpfm"], "reads the class names as prompts"),
        (["fairness_paradox", "--space", "optimizer.momentum=uniform(0.5, 0.9)"], "--space optimizer.momentum: it is "
         "part of the study's design"),
        (["fairness_paradox", "--space", "optimizer.lr=choice([0.01, 0.02, -1])"], "optimizer.lr"),
        (["fairness_paradox", "--space", "batch_size=randint(0, 4)"], "batch_size"),
    ]


def test_bad_data_and_flags_are_one_line_before_ray(tmp_path, tsv, capsys):
    for args, message in _bad_inputs(tmp_path, tsv):
        code, _, err = run([*args, "--dry-run"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)


def test_abbreviated_flags_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fairness_paradox", "--dry-run", "--data-d", "/tmp"])
    assert e.value.code == 2 and "unrecognized arguments: --data-d" in capsys.readouterr().err


# --- real launches (Ray, MLflow, the report): every built-in study on data unlike AG News -------
def _launch(tmp_path, study, cells, *extra, env=None):
    import os
    import subprocess
    import sys

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-m", "sweeps.launch", study, "--cells", cells, "--num-samples", "1",
                          "--seeds", "1", "--storage", str(tmp_path / "runs"), "--tracking-uri", db, *extra],
                         capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    return out, db


def _report(tmp_path, study, db):
    import subprocess
    import sys

    rep = subprocess.run([sys.executable, "-m", "sweeps.report", study, "--tracking-uri", db, "--out",
                          str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    return rep.stdout


def _dbpedia():
    from tests.conftest import SHARED_DATA

    meta = SHARED_DATA / "dbpedia14" / "meta.txt"
    if not meta.is_file():
        pytest.skip(f"DBpedia-14 not found at {meta.parent} (../shared/data is absent on a fresh clone)")
    names = [line.split(":", 1)[1].strip() for line in meta.read_text().splitlines() if line[:1].isdigit()]
    d = meta.parent
    return (f"csv:{d / 'train.csv'}?header=none&text=1&label=0&label_offset=1&class_names={','.join(names)}",
            f"csv:{d / 'test.csv'}?header=none&text=1&label=0&label_offset=1", names)


@pytest.mark.slow
@pytest.mark.parametrize("study, cells, data", [
    ("fairness_paradox", "textcnn-a1", "tsv"),         # 3 string classes under other column names
    ("rank_collapse", "fedit-uniform", "synthetic2"),  # a 2-class corpus
    ("lora_fair", "lora_fair-dirichlet", "dbpedia"),   # DBpedia-14's 14 classes
    ("fed_lpfm", "fed_lpfm-textcnn-reviews-a1", "tsv"),
    ("fedpurel", "fedpurel-", "synthetic2"),
])
def test_every_study_runs_on_other_data_and_reports_its_classes(tmp_path, tsv, study, cells, data):
    if data == "tsv":
        extra, classes = ["--data", f"tsv:{tsv}?text=review&label=verdict"], ["bad", "good", "meh"]
    elif data == "synthetic2":
        extra, classes = ["--data", "synthetic:topics?classes=2&n=600&test=100"], ["synthetic-world", "synthetic-sports"]
    else:
        train, test, classes = _dbpedia()
        extra = ["--data", train, "--test-data", test, "--set", "data.max_train_samples=700",
                 "--set", "data.max_test_samples=280"]
    out, db = _launch(tmp_path, study, cells, *extra, "--set", "rounds=2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(classes)} classes ({', '.join(classes[:6])}" in out.stdout
    report = _report(tmp_path, study, db)
    assert all(c in report for c in classes[:4]), report[:2000]  # the report names the data's classes


@pytest.mark.slow
def test_a_launch_whose_trials_all_fail_exits_non_zero_with_one_line_each(tmp_path):
    out, _ = _launch(tmp_path, "fairness_paradox", "textcnn-a0.1", "--set", "cache_dir=/proc/no-such-dir")
    assert out.returncode == 1, out.stderr[-3000:]
    failed = [line for line in out.stdout.splitlines() if "] trial " in line]  # every line about a trial
    assert len(failed) == 1 and "[textcnn-a0.1-fedavg tune]" in failed[0] and "/proc/no-such-dir" in failed[0]
    assert ": failed (retried once): " in failed[0]
    # the kept error file, then how far the launch is
    assert re.search(r"\(traceback: \S+/error\.txt\); 1/\d+ trials ended, [\d.]+ min in", failed[0]), failed[0]
    assert "Traceback" not in out.stdout + out.stderr  # tracebacks stay in the error files
    assert "every trial failed" in out.stdout and "error: 1 of 1 cells have no result" in out.stderr


@pytest.mark.slow
def test_a_plugin_method_runs_in_a_launch(tmp_path):
    """A study file whose cells name a method defined outside the project (module:Class)."""
    from pathlib import Path

    study = tmp_path / "plugin.yaml"
    study.write_text(
        "study: plugin_study\n"
        "base: {data: {source: 'sklearn:digits'}, model: {name: mlp}, partition: {num_clients: 4}, rounds: 2,\n"
        "       max_local_steps: 5}\n"
        "factors:\n"
        "  method: {key: method.name, values: ['plugin_pkg.fedavg_step:FedAvgStep']}\n"
        "cell_name: plugin\n"
        "space: {method.params.server_lr: 'uniform(0.5, 1.0)'}\n")
    tests_dir = str(Path(__file__).resolve().parent)  # where plugin_pkg lives, for the driver and the workers
    out, db = _launch(tmp_path, str(study), "plugin", env={"PYTHONPATH": tests_dir})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "plugin   " in out.stdout and "tunes method.params.server_lr" in out.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(db)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("plugin_study").experiment_id])
            if r.data.tags.get("kind") != "launch"]
    assert len(runs) == 2 and all(r.data.params["method.name"] == "plugin_pkg.fedavg_step:FedAvgStep" for r in runs)
    assert all(r.data.metrics["round"] == 2 for r in runs)
