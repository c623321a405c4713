"""The catalogue of bad inputs (docs/sweeps.md, "Validation, failures and exit status"): every flag, field and data shape that once hung,
crashed or was computed wrongly, each refused with one `error:` line naming it (exit 2) before any
training or Ray start. A new flag or field that can be given a bad value gets a row here."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from fedcore.run import main as run_main
from sweeps.launch import main as launch_main

SYNTH = "synthetic:topics?n=60&test=20"
RUN = ["--data", SYNTH, "--clients", "2", "--rounds", "1"]  # a tiny valid fedcore.run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def _files(tmp):
    """The inputs the rows name, written under tmp."""
    (tmp / "a_file").write_text("not a folder\n")
    rows = {
        "float.csv": "text,label\n" + "".join(f"text {i},{1.5 if i == 3 else i % 2}\n" for i in range(8)),
        "blank.csv": "text,label\n" + "".join(f"text {i},{'' if i == 2 else 'ab'[i % 2]}\n" for i in range(8)),
        "three.csv": "text,label\n" + "".join(f"text {i},{'abc'[i % 3]}\n" for i in range(9)),
        "two_ints.csv": "text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(8)),
        "empty.csv": "",
        "header_only.csv": "text,label\n",
    }
    for name, text in rows.items():
        (tmp / name).write_text(text)
    (tmp / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (tmp / "folder").mkdir()
    (tmp / "folder" / "train.csv").write_text(rows["two_ints.csv"])
    (tmp / "date.yaml").write_text("seed: 2026-01-01\n")


# (case, tool, argv with {tmp} for the test's folder, what the error line must say)
CATALOGUE = [
    # --- sweeps.launch: flags
    ("cells not a regex", "launch", ["fairness_paradox", "--cells", "fedavg("], "--cells 'fedavg(': not a regular expression"),
    ("cpus nan", "launch", ["fairness_paradox", "--cpus-per-trial", "nan", "--dry-run"], "--cpus-per-trial nan: allowed a number > 0"),
    ("cpus inf", "launch", ["fairness_paradox", "--cpus-per-trial", "inf", "--dry-run"], "--cpus-per-trial inf"),
    ("cpus zero", "launch", ["fairness_paradox", "--cpus-per-trial", "0"], "--cpus-per-trial 0: allowed a number > 0"),
    ("cpus beyond this machine", "launch", ["fairness_paradox", "--cpus-per-trial", "4096", "--dry-run"],
     "--cpus-per-trial 4096: this machine has"),
    ("gpus nan", "launch", ["fairness_paradox", "--gpus-per-trial", "nan", "--dry-run"], "--gpus-per-trial nan"),
    ("gpus negative", "launch", ["fairness_paradox", "--gpus-per-trial", "-1"], "--gpus-per-trial -1"),
    ("gpus fraction above one", "launch", ["fairness_paradox", "--gpus-per-trial", "1.5", "--address", "auto"],
     "--gpus-per-trial 1.5: above 1, a trial takes whole GPUs"),
    ("placement timeout nan", "launch", ["fairness_paradox", "--placement-timeout", "nan"], "--placement-timeout nan"),
    ("address not host:port", "launch", ["fairness_paradox", "--address", "nohost"], "--address 'nohost': allowed host:port"),
    ("storage is a file", "launch", ["fairness_paradox", "--storage", "{tmp}/a_file", "--dry-run"],
     "--storage '{tmp}/a_file' is a file"),
    ("storage under a file", "launch", ["fairness_paradox", "--storage", "{tmp}/a_file/runs", "--dry-run"],
     "--storage '{tmp}/a_file/runs': cannot write there"),
    ("tracking store under a file", "launch", ["fairness_paradox", "--tracking-uri", "sqlite:///{tmp}/a_file/m.db", "--dry-run"],
     "--tracking-uri's folder '{tmp}/a_file' is a file"),
    ("tracking store is a folder", "launch", ["fairness_paradox", "--tracking-uri", "sqlite:///{tmp}/folder", "--dry-run"],
     "is a folder; give the database file"),
    ("data-dir is one corpus of several", "launch", ["fed_lpfm", "--profile", "local", "--data-dir", "{tmp}/corpora/ag_news",
                                                     "--dry-run"], "give the folder that holds it, --data-dir {tmp}/corpora"),
    ("--set value that reads as a date", "launch", ["fairness_paradox", "--set", "rounds=2026-01-01", "--dry-run"],
     "rounds: Input should be a valid integer"),
    ("--set alpha inf", "launch", ["fairness_paradox", "--cells", "textcnn-a0.1-fedavg$", "--set",
                                   "partition.fine_alpha=.inf", "--dry-run"], "fine_alpha"),
    # --- fedcore.run: files it writes, --resume
    ("checkpoint under a file", "run", [*RUN, "--checkpoint", "{tmp}/a_file/ck.pt"], "--checkpoint's folder '{tmp}/a_file'"),
    ("checkpoint is a folder", "run", [*RUN, "--checkpoint", "{tmp}/folder"], "--checkpoint '{tmp}/folder' is a folder"),
    ("json-out under a file", "run", [*RUN, "--json-out", "{tmp}/a_file/out.json"], "--json-out's folder '{tmp}/a_file'"),
    ("resume without checkpoint", "run", [*RUN, "--resume"], "--resume continues from --checkpoint FILE"),
    ("resume, no checkpoint file", "run", [*RUN, "--checkpoint", "{tmp}/none.pt", "--resume"], "--resume: no checkpoint at"),
    ("config value that reads as a date", "run", ["--config", "{tmp}/date.yaml"], "seed: Input should be a valid integer"),
    # --- config values
    ("alpha inf", "run", [*RUN, "--alpha", "inf"], "partition.alpha"),
    ("alpha nan", "run", [*RUN, "--alpha", "nan"], "partition.alpha"),
    ("lr nan", "run", [*RUN, "--lr", "nan"], "optimizer.lr"),
    ("method param inf", "run", [*RUN, "--method", "fedprox", "--mu", "inf"], "method.params.mu"),
    # --- data
    ("fractional labels", "run", ["--data", "csv:{tmp}/float.csv", "--clients", "2"], "label 1.5 is not a whole number"),
    ("blank labels", "run", ["--data", "csv:{tmp}/blank.csv", "--clients", "2"], "1 row(s) have no label (the first: data row 3)"),
    ("fewer class names than string labels", "run", ["--data", "csv:{tmp}/three.csv?class_names=x,y", "--clients", "2"],
     "class_names: 2 names (x, y) for 3 distinct labels"),
    ("more class names than string labels", "run", ["--data", "csv:{tmp}/three.csv?class_names=w,x,y,z", "--clients", "2"],
     "class_names: 4 names (w, x, y, z) for 3 distinct labels"),
    ("more class names than class ids", "run", ["--data", "csv:{tmp}/two_ints.csv?class_names=a,b,c", "--clients", "2"],
     "class_names: 3 names (a, b, c) but the labels run 0..1"),
    ("empty csv", "run", ["--data", "csv:{tmp}/empty.csv", "--clients", "2"], "has no rows"),
    ("header-only csv", "run", ["--data", "csv:{tmp}/header_only.csv", "--clients", "2"], "has no rows below its header"),
    ("binary file as csv", "run", ["--data", "csv:{tmp}/binary.csv", "--clients", "2"], "is not a text file"),
    ("folder as csv path", "run", ["--data", "csv:{tmp}/folder", "--clients", "2"],
     "is a folder (from 'csv:{tmp}/folder'); name its file, e.g. csv:{tmp}/folder/train.csv"),
    ("synthetic signal nan", "run", ["--data", "synthetic:topics?signal=nan", "--clients", "2"], "signal='nan'"),
    ("synthetic signal above 1", "run", ["--data", "synthetic:topics?signal=1.5", "--clients", "2"], "a probability in [0, 1]"),
    ("synthetic n 0", "run", ["--data", "synthetic:topics?n=0", "--clients", "2"], "n='0'"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    d = tmp_path_factory.mktemp("catalogue")
    _files(d)
    (d / "corpora" / "ag_news").mkdir(parents=True)
    for name in ("train.csv", "test.csv"):
        (d / "corpora" / "ag_news" / name).write_text("text,label\nx,1\n")
    return d


@pytest.mark.parametrize("case, tool, argv, message", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_error_line(case, tool, argv, message, tmp, capsys):
    import ray

    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    if tool == "launch" and "--tracking-uri" not in argv:
        argv += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
    if tool == "launch" and "--storage" not in argv:
        argv += ["--storage", str(tmp / "runs")]
    rc = (launch_main if tool == "launch" else run_main)(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert rc == 2, (case, err)
    assert len(err) == 1 and err[0].startswith("error: "), (case, err)
    assert message.replace("{tmp}", str(tmp)) in err[0], (case, err[0])
    assert not ray.is_initialized()


def _launch(*argv: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.launch", *argv], capture_output=True, text=True, timeout=timeout)


def test_a_gpu_share_on_a_machine_without_a_gpu_fails_fast(tmp):
    """It used to hang: no trial can be placed, and Tune waits for ever."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the share can be placed")
    out = _launch("fairness_paradox", "--gpus-per-trial", "1", "--tracking-uri", f"sqlite:///{tmp}/gpu.db",
                  "--storage", str(tmp / "gpu_runs"), timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: --gpus-per-trial 1: this machine has no GPU")
    assert "Traceback" not in out.stderr


def test_an_address_where_no_ray_head_listens_fails_fast(tmp):
    """It used to hang for minutes inside ray.init; the port is probed first."""
    port = _free_port()
    out = _launch("fairness_paradox", "--address", f"127.0.0.1:{port}", "--tracking-uri", f"sqlite:///{tmp}/addr.db",
                  "--storage", str(tmp / "addr_runs"), timeout=120)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --address 127.0.0.1:{port}: nothing answers there"), last
    assert "ray start --head" in last and "Traceback" not in out.stderr


def test_data_dir_replaces_the_smoke_corpus(tmp, capsys):
    """--data-dir at a smoke profile whose data is synthetic trains on the folder's AG News, not on the
    synthetic corpus (it once ignored it without a word)."""
    d = tmp / "agnews_small"
    d.mkdir(exist_ok=True)
    words = ["world", "sport", "market", "science"] * 30
    (d / "train.csv").write_text("text,label\n" + "".join(f"{w} story {i},{i % 4}\n" for i, w in enumerate(words)))
    (d / "test.csv").write_text("".join(f"{1 + i % 4},title,{w} story {i}\n" for i, w in enumerate(words[:40])))
    assert launch_main(["fed_lpfm", "--data-dir", str(d), "--dry-run", "--tracking-uri", f"sqlite:///{tmp}/dd.db",
                        "--storage", str(tmp / "dd_runs")]) == 0
    data_lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("data ")]
    assert data_lines and all(ln.startswith("data agnews_small: 120 train / 40 test") for ln in data_lines), data_lines
