"""A user's study file: validated like a run config (one line, the nearest key), merged by profile
and controls as documented, and run end to end from the README's example: launch, --resume and the
report, with real Ray and MLflow."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps.launch import main
from sweeps.study_file import Replace, _Loader, load_study, merge

ROOT = Path(__file__).resolve().parents[1]


def readme_study() -> str:
    """The study file of the README's "Your own study" section, as a user would paste it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Your own study"):]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def write(tmp_path, doc) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_the_readme_study_plans_its_cells_and_conditional_space(tmp_path, capsys):
    path = write(tmp_path, readme_study())
    study = load_study(path)
    cells = study.cells(study.profiles["smoke"])
    names = [study.cell_name(c) for c in cells]
    assert names == ["fedavg-a0.1", "fedavg-a1", "fedprox-a0.1", "fedprox-a1"]
    assert cells[2] == {"method": "fedprox", "alpha": 0.1}
    assert set(study.space(cells[0])) == {"optimizer.lr"}  # mu only where the method is FedProx
    assert set(study.space(cells[2])) == {"optimizer.lr", "method.params.mu"}
    assert main([path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 design cells x (1 tuning + 2 seed trials) = 12 trials" in out
    assert "data sklearn:digits: 1438 train / 359 test samples (features), 10 classes" in out
    assert main([path, "--profile", "full", "--dry-run", "--cells", "fedprox-a1"]) == 0
    assert "1 design cells x (3 tuning + 3 seed trials)" in capsys.readouterr().out


def test_merge_deletes_with_null_and_replaces_a_tagged_mapping():
    doc = {"a": {"x": 1, "y": 2}, "b": [1, 2], "c": {"p": 1, "q": 2}}
    got = merge(doc, {"a": {"y": None, "z": 3}, "b": [3], "c": Replace({"q": 5, "p": 6})})
    assert got == {"a": {"x": 1, "z": 3}, "b": [3], "c": {"q": 5, "p": 6}}
    assert list(got["c"]) == ["q", "p"]  # the overlay's order: a space samples in its keys' order


BASE = {"study": "mine", "base": {"data": {"source": "sklearn:digits"}, "model": {"name": "mlp"}},
        "factors": {"method": {"key": "method.name", "values": ["fedavg", "fedprox"]}}}


@pytest.mark.parametrize("change, message", [
    ({"factor": {}}, "factor: unknown key (did you mean 'factors'?); allowed: study, summary"),
    ({"budget": {"num_sample": 2}}, "budget.num_sample: unknown key (did you mean 'num_samples'?)"),
    ({"budget": {"seeds": 0}}, "budget.seeds: Input should be greater than or equal to 1"),
    ({"objectives": ["gap"]}, "'gap' is better when lower and objectives are maximised"),
    ({"objectives": ["worst_acc"]}, "unknown metric 'worst_acc' (did you mean 'worst_client_acc'?)"),
    ({"exclude": [{"methd": "fedavg"}]}, "exclude[0]: unknown factor 'methd' (did you mean 'method'?)"),
    ({"exclude": [{"method": "fedprx"}]}, "method has no level 'fedprx' (did you mean 'fedprox'?)"),
    ({"space": {"optimizer.lr": "loguniform(1e-3)"}}, "space.optimizer.lr: loguniform takes 2 numbers"),
    ({"space": {"method.params.mu": {"dist": "uniform(0, 1)", "where": {"method": {"nope": 1}}}}},
     "a mapping here is {not: level}"),
    ({"cell_name": "{method}-{alpha}"}, "cell_name: unknown factor 'alpha'"),
    ({"factors": {"alpha": {"values": [0.1]}}}, "values need the key"),
    ({"factors": {"d": {"from": "files"}}}, "from: 'files'; allowed: datasets"),
    ({"vars": {"a": 1}, "summary": "${b}"}, "${b} is not in vars"),
    ({"profiles": {"smoke": {}, "full": {"budgt": {}}}}, "profile full: budgt: unknown key (did you mean 'budget'?)"),
    ({"profiles": {"smoke": {}}, "controls": {}}, None),  # valid; checked below with --controls
])
def test_a_bad_study_file_is_one_line_naming_the_key(tmp_path, capsys, change, message):
    path = write(tmp_path, merge(BASE, change))
    code = main([path, "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    if message is None:
        assert code == 0
        assert main([path, "--dry-run", "--controls"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        message = "--controls, but the study has no controls: section"
    assert code == 2 or message.startswith("--controls")
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_every_cell_config_is_validated_before_ray(tmp_path, capsys):
    doc = merge(BASE, {"factors": {"clients": {"key": "partition.num_clients", "values": [5, 0]}}})
    assert main([write(tmp_path, doc), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "error: cell fedavg-0: invalid config: partition.num_clients" in err and err.count("\n") == 1
    doc = merge(BASE, {"base": {"optimizer": {"lrr": 0.1}}})
    assert main([write(tmp_path, doc), "--dry-run"]) == 2
    assert "did you mean 'lr'?" in capsys.readouterr().err


def test_levels_record_their_own_cell_and_name_and_not_excludes(tmp_path):
    doc = merge(BASE, {
        "factors": {"split": {"levels": {
            "iid": {"name": "iid", "cell": {"partition": "iid", "alpha": 0.0}, "set": {"partition.kind": "iid"}},
            "a0.1": {"cell": {"partition": "dirichlet", "alpha": 0.1}, "set": {"partition.alpha": 0.1}}}}},
        "exclude": [{"method": "fedprox", "split": {"not": "a0.1"}}]})
    study = load_study(write(tmp_path, doc))
    cells = study.cells(study.profiles["default"])
    assert [study.cell_name(c) for c in cells] == ["fedavg-iid", "fedavg-a0.1", "fedprox-a0.1"]
    assert cells[0] == {"method": "fedavg", "partition": "iid", "alpha": 0.0}
    assert study.cell_overrides(cells[0], None) == {"method.name": "fedavg", "partition.kind": "iid"}


def test_print_study_gives_the_built_in_file(capsys):
    assert main(["rank_collapse", "--print-study"]) == 0
    text = capsys.readouterr().out
    assert text == (ROOT / "studies" / "rank_collapse.yaml").read_text()
    assert yaml.load(text, Loader=_Loader)["study"] == "rank_collapse"


@pytest.mark.slow
def test_the_readme_study_runs_resumes_and_reports(tmp_path):
    """The README's study, end to end as a user runs it: a launch, a --resume of the finished launch
    (nothing runs again), a changed file refused on --resume, and the generic report."""
    path = write(tmp_path, readme_study())
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, "-m", "sweeps.launch", path, "--cells", "a0.1", "--storage", str(tmp_path / "runs"),
            "--tracking-uri", db]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith(("fedavg-a0.1 ", "fedprox-a0.1 "))]
    assert len(rows) == 2 and all(r.split()[1] == "2" for r in rows)
    again = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming launch" in again.stdout and "] trial" not in again.stdout  # all finished: nothing reruns
    assert [line for line in again.stdout.splitlines() if line.startswith(("fedavg-a0.1 ", "fedprox-a0.1 "))] == rows
    Path(path).write_text(readme_study().replace("seeds: 2", "seeds: 3", 1))
    changed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=120)
    assert changed.returncode == 2 and "changed since launch" in changed.stderr
    report = subprocess.run([sys.executable, "-m", "sweeps.report", "fedprox_mu_vs_alpha", "--tracking-uri", db,
                             "--out", str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "fedprox" in report.stdout and "0.1" in report.stdout


def test_the_readme_plugin_method_runs_through_fedcore_run(tmp_path):
    """The README's "Your own method" code and command, as pasted."""
    import os

    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Your own method"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "mylab").mkdir()
    (tmp_path / "mylab" / "__init__.py").write_text("")
    (tmp_path / "mylab" / "server_step.py").write_text(code)
    out = subprocess.run([sys.executable, "-m", "fedcore.run", "--data", "sklearn:digits", "--model", "mlp",
                          "--rounds", "2", "--method", "mylab.server_step:ServerStep", "--set",
                          "method.params.server_lr=0.5"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mylab.server_step:ServerStep" in out.stdout and "round   2/2" in out.stdout


def test_the_readme_csv_example_plans(tmp_path, capsys):
    """The README's "Your own data" CSV, made as its snippet makes it, through fairness_paradox's dry run."""
    from tests.conftest import AG_NEWS

    if not (AG_NEWS / "train.csv").is_file():
        pytest.skip(f"real AG News not found at {AG_NEWS} (../shared/data is absent on a fresh clone)")
    import csv

    rows = list(csv.DictReader(open(AG_NEWS / "train.csv")))[:3000]
    with open(tmp_path / "reviews.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "topic"])
        w.writerows([r["text"], r["label_name"]] for r in rows)
    assert main(["fairness_paradox", "--data", f"csv:{tmp_path / 'reviews.csv'}?text=review&label=topic",
                 "--dry-run"]) == 0
    assert "data reviews: " in capsys.readouterr().out
