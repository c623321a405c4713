"""The README's main command (`make run` = launch + report of fairness_paradox, smoke profile) on a
fresh copy of the repository, with every connection off this machine refused."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Loaded by every Python process of the run (driver, Ray workers) through PYTHONPATH: DNS lookups and
# connections to anything but the loopback interface raise.
NO_NETWORK = textwrap.dedent('''
    import ipaddress, socket

    try:  # this machine's own addresses (Ray talks to itself on them)
        import psutil
        _OWN = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    except ImportError:
        _OWN = set()

    def _local(host):
        if host in ("localhost", "", None) or host in _OWN:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        return ip.is_loopback or ip.is_unspecified

    _getaddrinfo, _connect, _connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, *a, **k):
        if isinstance(host, bytes):
            host = host.decode()
        if not _local(host) and host != socket.gethostname():
            raise OSError(f"network disabled by the test: lookup of {host}")
        return _getaddrinfo(host, *a, **k)

    def _check(self, address):
        # a UDP connect sends nothing (Ray uses one to learn its own address); DNS goes through getaddrinfo
        if self.family in (socket.AF_INET, socket.AF_INET6) and self.type != socket.SOCK_DGRAM \
                and not _local(address[0]):
            raise OSError(f"network disabled by the test: connect to {address}")

    def connect(self, address):
        _check(self, address)
        return _connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return _connect_ex(self, address)

    socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = getaddrinfo, connect, connect_ex
''')


def fresh_copy(dest: Path) -> Path:
    """What a fresh clone of this working tree holds: tracked and untracked-but-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_no_network_guard_refuses_outside_connections(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_NETWORK)
    code = ("import socket, urllib.request\n"
            "try:\n    urllib.request.urlopen('https://huggingface.co', timeout=5)\nexcept OSError as e:\n"
            "    print('refused' if 'network disabled' in str(e) else f'other {e}')\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "refused", out.stderr


@pytest.mark.slow
def test_readme_main_command_on_a_fresh_clone_offline(tmp_path):
    repo = fresh_copy(tmp_path / "clone")
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONPATH")}
    # the clone's code first (not this checkout's editable install); a cache no earlier run filled
    env.update(PYTHONPATH=f"{repo}{os.pathsep}{guard}", FEDCORE_CACHE=str(tmp_path / "cache"))
    makefile = (repo / "Makefile").read_text()
    commands = [line.strip().replace("$(PY)", sys.executable) for line in makefile.split("\nrun: setup\n")[1].split("\n\n")[0].splitlines()]
    assert commands == [f"{sys.executable} -m sweeps.launch fairness_paradox",
                        f"{sys.executable} -m sweeps.report fairness_paradox --profile smoke"]

    launch = subprocess.run(commands[0].split(), cwd=repo, env=env, capture_output=True, text=True, timeout=1500)
    assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-4000:]
    rows = [line.split() for line in launch.stdout.splitlines() if line.startswith(("textcnn-a", "fm_lora-a"))]
    assert sorted(r[0] for r in rows) == ["fm_lora-a0.1-fedavg", "fm_lora-a0.1-fedavgw", "fm_lora-a1-fedavg",
                                          "fm_lora-a1-fedavgw", "textcnn-a0.1-fedavg", "textcnn-a1-fedavg"]
    assert all(r[1] == "2" for r in rows)  # two seeds in every cell
    assert (repo / "mlflow" / "mlflow.db").is_file() and any((repo / "runs").glob("fairness_paradox-smoke-*"))

    report = subprocess.run(commands[1].split(), cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "0.1  fm_lora    fedavg       2" in report.stdout
    [out] = (repo / "reports").iterdir()
    assert {p.name for p in out.iterdir()} >= {"gap_vs_alpha.png", "per_client_alpha0.1.png",
                                               "worst_client_over_rounds.png", "table.csv", "contrasts.csv",
                                               "gap_vs_alpha.svg"}
    assert "Contrasts (" in report.stdout and "p Holm" in report.stdout
    check_contrasts_against_runs(f"sqlite:///{repo / 'mlflow' / 'mlflow.db'}", out / "contrasts.csv")


def check_contrasts_against_runs(uri: str, path: Path) -> None:
    """Every paired contrast of the report equals scipy's paired t on the seed runs' final metrics."""
    import csv

    from mlflow.tracking import MlflowClient
    from scipy import stats as st

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fairness_paradox")
    [parent] = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'launch'")
    finals: dict = {}
    for r in client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"):
        if r.data.tags["cell.stage"] == "seeds":
            finals.setdefault(r.data.tags["cell.name"], {})[int(r.data.params["seed"])] = r.data.metrics
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["pairing"] for r in rows} == {"paired"}
    tested = []
    for row in rows:
        names = [row["a"], row["b"]]
        if row["interaction"]:  # (a - b at the smallest alpha) - (a' - b' at the largest): its cells by name
            lo, hi = row["interaction"].replace("alpha ", "").split(" - ")
            names += [n.replace(f"-a{float(lo):g}-", f"-a{float(hi):g}-") for n in names]
        cells = [finals[n] for n in names]
        seeds = sorted(set.intersection(*(set(c) for c in cells)))
        assert len(seeds) >= 2 and 0 not in seeds  # the seed runs never include the tuning seed
        m = row["metric"]
        d = [cells[0][s][m] - cells[1][s][m] - ((cells[2][s][m] - cells[3][s][m]) if len(cells) == 4 else 0.0)
             for s in seeds]
        assert float(row["estimate_pp"]) == pytest.approx(100 * sum(d) / len(d), abs=1e-3)
        if row["p"] == "":  # no test: the metric is one constant in every cell compared
            assert len({round(c[s][m], 12) for c in cells for s in seeds}) == 1  # up to float error, as the report reads it
            continue
        if len(set(d)) > 1:
            assert float(row["p"]) == pytest.approx(st.ttest_1samp(d, 0).pvalue, rel=1e-6)
            lo_ci, hi_ci = st.t.interval(0.95, len(d) - 1, loc=sum(d) / len(d), scale=st.sem(d))
            assert float(row["ci_lo_pp"]) == pytest.approx(100 * lo_ci, abs=1e-3)
            assert float(row["ci_hi_pp"]) == pytest.approx(100 * hi_ci, abs=1e-3)
        tested.append(row)
    # Holm over the tested contrasts, by hand; the verdict follows it
    ps = sorted(float(r["p"]) for r in tested)
    for r in tested:
        p = float(r["p"])
        rank = ps.index(p)
        holm = max(min(1.0, (len(ps) - i) * ps[i]) for i in range(rank + 1))
        assert float(r["p_holm"]) == pytest.approx(holm)
        assert (r["verdict"] == "resolved") == (holm < 0.05)
