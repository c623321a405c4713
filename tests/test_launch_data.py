"""A launch on the user's data (--data, --test-data), --set and --space: every bad input is one line
and exit status 2 before Ray starts; the plan follows the data and the flags."""
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
