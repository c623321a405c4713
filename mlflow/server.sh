#!/usr/bin/env bash
# Start the MLflow tracking server on this project's store and print the URL to open once it answers
# /health. Binds 127.0.0.1 unless told otherwise: reach it from another machine through an SSH tunnel
# (ssh -L 5000:127.0.0.1:5000 host), never by binding a public address.
#   bash mlflow/server.sh [--host 127.0.0.1] [--port 5000] [--workers 1] [--jobs]
#                         [--store sqlite:////abs/path.db] [--artifacts DIR] [-- MLFLOW-SERVER-OPTIONS]
# Light by default, for one machine: one request worker and no job runner. --workers N for more workers
# (a server that many clients log to at once), --jobs for MLflow's job runner (GenAI evaluation jobs,
# prompt optimisation; nothing this project records needs it). The same settings through the
# environment: MLFLOW_HOST, MLFLOW_PORT, MLFLOW_WORKERS, MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true.
# Options after `--` go to `mlflow server` as they are.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
host="${MLFLOW_HOST:-127.0.0.1}" port="${MLFLOW_PORT:-5000}" workers="${MLFLOW_WORKERS:-1}"
# MLflow 3 starts its job runner by default: a runner and seven huey consumers, most of the server's
# processes and memory, for GenAI jobs this project never submits
jobs="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
store="sqlite:///$here/mlflow.db" artifacts="$here/artifacts"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --jobs) jobs=true; shift ;;
    --store) store="$2"; shift 2 ;;
    --artifacts) artifacts="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$workers" in ''|*[!0-9]*|0) echo "error: --workers must be a positive integer, got '$workers'" >&2; exit 2 ;; esac
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python3

# a wildcard bind is reached through the loopback address; an IPv6 literal needs brackets
case "$host" in
  0.0.0.0|::|"") local_host=127.0.0.1 ;;
  *:*) local_host="[$host]" ;;
  *) local_host="$host" ;;
esac
url="http://$local_host:$port"

# the server in a process group of its own (job control on for this one start): a stop ends the whole
# group, the uvicorn workers too, which outlive a TERM sent to the server's first process alone
set -m
MLFLOW_SERVER_ENABLE_JOB_EXECUTION="$jobs" "$python" -m mlflow server --host "$host" --port "$port" \
  --workers "$workers" --backend-store-uri "$store" --artifacts-destination "$artifacts" ${extra[@]+"${extra[@]}"} &
server=$! poller="" stopping=""
set +m
# a TERM, INT or HUP sent to this script alone stops every process of the server
stop() {
  stopping=1
  kill -TERM -- "-$server" 2>/dev/null || true
  [ -z "$poller" ] || kill "$poller" 2>/dev/null || true
}
trap stop INT TERM HUP
# however this script ends, nothing of the server stays behind (a worker that ignored TERM gets KILL)
trap 'kill -TERM -- "-$server" 2>/dev/null || true; sleep 1; kill -KILL -- "-$server" 2>/dev/null || true' EXIT

# the URL is worth printing only once the server answers; stop waiting (not the server) after 5 min.
# The poll runs in the background: `wait` returns at once on a signal, a foreground command would not
"$python" - "$url/health" "$server" <<'PY' &
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])

def alive() -> bool:
    if os.path.isdir("/proc/self"):  # an exited server stays a zombie until this script waits for it
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    try:  # no /proc (macOS)
        os.kill(pid, 0)
        return True
    except OSError:
        return False

deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    if not alive():
        sys.exit(1)
    time.sleep(0.25)
sys.exit(1)
PY
poller=$!
if wait "$poller"; then
  [ -n "$stopping" ] || echo "MLflow UI: $url  (store $store; Ctrl-C stops it)"
elif [ -z "$stopping" ] && kill -0 "$server" 2>/dev/null; then
  echo "warning: $url/health does not answer after 5 min; the server is still starting" >&2
fi
poller=""
# a trapped signal makes `wait` return before the server has shut down: wait until it has
status=0
wait "$server" || status=$?
while kill -0 "$server" 2>/dev/null; do wait "$server" || status=$?; done
exit "$status"
