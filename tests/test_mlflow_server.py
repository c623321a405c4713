"""The server launcher in mlflow/ starts a real MLflow server on 127.0.0.1 that the launch's
tracking code can use."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps.tracking import check_tracking_uri, end_run, find_launch, reopen_run, start_parent_run

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.Popen(["bash", str(ROOT / "mlflow" / "server.sh"), "--port", str(port),
                             "--store", f"sqlite:///{tmp_path / 'db.sqlite'}", "--artifacts", str(tmp_path / "art")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            check_tracking_uri(uri)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                pytest.fail("mlflow server did not come up")
            time.sleep(1)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_launch_records_through_a_real_server(server):
    from mlflow.tracking import MlflowClient

    exp_id, run_id = start_parent_run(server, "fairness_paradox", "smoke", ["fairness_paradox"],
                                      "/shared/runs/fairness_paradox-smoke-1", "/shared/runs")
    end_run(server, run_id, "KILLED")
    run = find_launch(server, "fairness_paradox", "smoke", "/shared/runs")  # what --resume looks up
    assert run.info.run_id == run_id and run.info.status == "KILLED"
    assert run.data.tags["tune_dir"] == "/shared/runs/fairness_paradox-smoke-1"
    assert find_launch(server, "fairness_paradox", "local", "/shared/runs") is None
    reopen_run(server, run_id, ["fairness_paradox", "--resume"])
    end_run(server, run_id, "FINISHED")
    run = MlflowClient(server).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["profile"] == "smoke" and run.data.tags["resumed"] == "1"
    assert run.info.experiment_id == exp_id


def _start(tmp_path, port):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.Popen(["bash", str(ROOT / "mlflow" / "server.sh"), "--port", str(port), "--workers", "2",
                             "--store", f"sqlite:///{tmp_path / 'db.sqlite'}", "--artifacts", str(tmp_path / "art")],
                            env=env, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    _wait_for_url(tmp_path / "server.log", proc)
    return proc


def _wait_for_url(log: Path, proc, timeout: float = 120) -> None:
    """server.sh prints "MLflow UI: <url>" once /health answers (the server's own lines around it)."""
    deadline = time.monotonic() + timeout
    while "MLflow UI: http://127.0.0.1:" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.5)


def test_stopping_the_scripts_pid_alone_ends_every_server_process(tmp_path):
    """TERM to server.sh's own pid (what a process manager sends) ends the server and its uvicorn
    workers, which once kept serving after their parent was gone."""
    import psutil

    port = free_port()
    proc = _start(tmp_path, port)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 3  # the server, its uvicorn parent and 2 workers (and the health poller gone)
    os.kill(proc.pid, signal.SIGTERM)  # not the group: the script alone
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing serves the port
