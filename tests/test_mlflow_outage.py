"""The MLflow tracking server dies in the middle of a real launch (mlflow/server.sh, a real server on
127.0.0.1): the trials go on, their records wait in the launch's outbox (sweeps/outbox.py), and
nothing is lost once the server is back, whether it comes back during the launch or only for its
--resume."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_mlflow_server import _wait_for_url

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp: Path):
        self.tmp, self.port, self.proc = tmp, _free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        self.proc = subprocess.Popen(
            ["bash", str(ROOT / "mlflow" / "server.sh"), "--port", str(self.port), "--store",
             f"sqlite:///{self.tmp / 'db.sqlite'}", "--artifacts", str(self.tmp / "art")],
            env={**os.environ, "PYTHON": sys.executable}, stdout=open(self.tmp / "server.log", "w"),
            stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for_url(self.tmp / "server.log", self.proc)
        return self

    def kill(self) -> None:
        import psutil

        # the server dies, every process of it at once (server.sh runs it in a group of its own); it
        # does not shut down
        family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        for p in family:
            p.send_signal(signal.SIGKILL)
        psutil.wait_procs(family, timeout=30)
        self.proc.wait(timeout=30)
        time.sleep(1)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path).start()
    yield s
    if s.proc.poll() is None:
        os.kill(s.proc.pid, signal.SIGTERM)  # server.sh stops its whole server group
        s.proc.wait(timeout=60)


def _args(tmp_path, server, *extra):
    return [sys.executable, "-m", "sweeps.launch", "fairness_paradox", "--cells", "textcnn-a0.1-fedavg$",
            "--num-samples", "2", "--seeds", "2", "--max-concurrent", "1", "--storage", str(tmp_path / "runs"),
            "--tracking-uri", server.uri, *extra]


def _after_first_trial(proc) -> list[str]:
    seen, deadline = [], time.monotonic() + 300
    for line in proc.stdout:
        seen.append(line)
        if "] trial" in line and ": done" in line:
            return seen
        assert time.monotonic() < deadline, "".join(seen)
    raise AssertionError("".join(seen))


def _check_store(uri: str, trials: int):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fairness_paradox")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "launch"]
    children = [r for r in runs if r.data.tags.get("kind") != "launch"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == trials and len({c.data.tags["trial_name"] for c in children}) == trials
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "worst_client_acc")]
        assert steps == list(range(1, int(child.data.metrics["round"]) + 1)), steps
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"per_client_accuracy.csv"}


def test_server_back_during_the_launch_loses_nothing(tmp_path, server):
    proc = subprocess.Popen(_args(tmp_path, server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _after_first_trial(proc)
    server.kill()
    time.sleep(15)  # trials go on without it
    assert proc.poll() is None
    server.start()
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert f"note: MLflow at {server.uri} cannot be reached" in err and "answers again" in err
    assert "Traceback" not in err
    assert not (next((tmp_path / "runs").glob("*")) / "mlflow_outbox.jsonl").exists()
    _check_store(server.uri, 4)


def test_server_gone_for_good_ends_the_launch_resumably(tmp_path, server):
    proc = subprocess.Popen(_args(tmp_path, server, "--tracking-wait", "3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _after_first_trial(proc)
    server.kill()
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: the launch finished, but MLflow at {server.uri} did not answer again within 3 s")
    assert "--resume" in last and "Traceback" not in err
    assert "textcnn-a0.1-fedavg" in out  # the table is printed all the same
    outbox = next((tmp_path / "runs").glob("*")) / "mlflow_outbox.jsonl"
    assert outbox.exists()

    server.start()
    resumed = subprocess.run(_args(tmp_path, server, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "] trial" not in resumed.stdout  # nothing ran again
    assert not outbox.exists()
    _check_store(server.uri, 4)
