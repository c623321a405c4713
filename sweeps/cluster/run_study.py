"""Run a study on the head node of the Ray cluster made by sweeps/cluster/gpu_cluster.yaml.

    ray submit sweeps/cluster/gpu_cluster.yaml sweeps/cluster/run_study.py -- fairness_paradox --profile paper

Runs `python -m sweeps.launch STUDY [ARGS...] --address auto --storage $FEDSWEEP_STORAGE
--tracking-uri $FEDSWEEP_TRACKING_URI` in the fedsweep checkout. Before that it checks that
token authentication is on and a token is present, that FEDSWEEP_STORAGE names storage every node
can reach, and (for a local http tracking URI) that the MLflow server answers, starting
mlflow/server.sh in the background when it does not.

Environment:
  FEDSWEEP_STORAGE       required: s3://bucket/prefix (or gs://...), or an absolute path
                         mounted at the same place on every node (NFS/EFS)
  FEDSWEEP_TRACKING_URI  MLflow tracking URI (default http://127.0.0.1:5000)
  FEDSWEEP_HOME          the checkout (default: the one holding this file, else ~/fedsweep)
  RAY_AUTH_MODE          must be unset or 'token' (set to 'token' for the launch)

Any error gives one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
OWN_FLAGS = ("--address", "--storage", "--tracking-uri")  # set here, never passed through
URI_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "hdfs://")


class Fail(Exception):
    pass


def find_repo() -> Path:
    here = Path(__file__).resolve()
    if os.environ.get("FEDSWEEP_HOME"):
        candidates = [Path(os.environ["FEDSWEEP_HOME"]).expanduser()]
    else:  # sweeps/cluster/run_study.py inside a checkout, or ~/run_study.py as copied by `ray submit`
        candidates = [here.parents[2]] if len(here.parents) > 2 else []
        candidates.append(Path.home() / "fedsweep")
    for c in candidates:
        if (c / "sweeps" / "launch.py").is_file():
            return c.resolve()
    raise Fail(f"no fedsweep checkout in {', '.join(map(str, candidates))}; set FEDSWEEP_HOME")


def check_auth(env: dict[str, str]) -> None:
    mode = env.get("RAY_AUTH_MODE", "")
    if mode and mode.lower() != "token":
        raise Fail(f"RAY_AUTH_MODE={mode}: this cluster runs with token authentication; "
                   f"unset it or set RAY_AUTH_MODE=token")
    env["RAY_AUTH_MODE"] = "token"
    if env.get("RAY_AUTH_TOKEN"):
        return
    path = env.get("RAY_AUTH_TOKEN_PATH")
    token_file = Path(path).expanduser() if path else Path.home() / ".ray" / "auth_token"
    try:
        ok = token_file.read_text().strip() != ""
    except OSError:
        ok = False
    if not ok:
        raise Fail(f"no Ray auth token in {token_file} (nor RAY_AUTH_TOKEN); the cluster YAML "
                   f"mounts ~/.ray/auth_token from the machine that ran `ray up`")


def check_storage(storage: str | None) -> str:
    if not storage:
        raise Fail("FEDSWEEP_STORAGE is not set: give storage every node can reach, e.g. "
                   "export FEDSWEEP_STORAGE=s3://my-bucket/fedsweep-runs (see sweeps/cluster/README.md)")
    if "YOUR-BUCKET" in storage:
        raise Fail(f"FEDSWEEP_STORAGE={storage}: replace the placeholder bucket in gpu_cluster.yaml")
    if "://" in storage:
        if not storage.startswith(URI_SCHEMES):
            raise Fail(f"FEDSWEEP_STORAGE={storage}: use {', '.join(URI_SCHEMES)} or an absolute shared path")
        return storage
    p = Path(storage)
    if not p.is_absolute():
        raise Fail(f"FEDSWEEP_STORAGE={storage}: a path must be absolute and mounted on every node")
    if not p.parent.is_dir():
        raise Fail(f"FEDSWEEP_STORAGE={storage}: {p.parent} does not exist here (is the shared mount up?)")
    return storage


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def ensure_mlflow(uri: str, repo: Path, wait_s: float = 90) -> None:
    """Start mlflow/server.sh for an http://127.0.0.1 URI that does not answer yet."""
    u = urllib.parse.urlparse(uri)
    if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost") or healthy(uri):
        return
    log = Path(tempfile.gettempdir()) / "fedsweep-mlflow-server.log"
    print(f"starting the MLflow server on {u.hostname}:{u.port or 80} (log: {log})", flush=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", str(repo / "mlflow" / "server.sh"), "--host", "127.0.0.1",
                                 "--port", str(u.port or 80)], cwd=repo, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHON": sys.executable})
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if healthy(uri):
            return
        if proc.poll() is not None:
            raise Fail(f"the MLflow server exited with status {proc.returncode}; see {log}")
        time.sleep(1)
    raise Fail(f"the MLflow server did not answer on {uri}/health within {wait_s:.0f}s; see {log}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python sweeps/cluster/run_study.py", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-mlflow-server", action="store_true",
                   help="never start mlflow/server.sh (the tracking URI must already answer)")
    p.add_argument("study", help="study name, e.g. fairness_paradox")
    p.add_argument("launch_args", nargs=argparse.REMAINDER,
                   help="passed to python -m sweeps.launch (e.g. --profile paper --max-concurrent 16)")
    args = p.parse_args(argv)
    try:
        for a in args.launch_args:
            if a.split("=", 1)[0] in OWN_FLAGS:
                raise Fail(f"{a.split('=', 1)[0]} is set by this script; use FEDSWEEP_STORAGE / "
                           f"FEDSWEEP_TRACKING_URI instead (the address is always 'auto')")
        repo = find_repo()
        env = dict(os.environ)
        check_auth(env)
        storage = check_storage(env.get("FEDSWEEP_STORAGE"))
        tracking = env.get("FEDSWEEP_TRACKING_URI") or DEFAULT_TRACKING_URI
        if not args.no_mlflow_server:
            ensure_mlflow(tracking, repo)
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "sweeps.launch", args.study, *args.launch_args,
           "--address", "auto", "--storage", storage, "--tracking-uri", tracking]
    print("running:", " ".join(cmd[1:]), f"(in {repo})", flush=True)
    os.chdir(repo)
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
