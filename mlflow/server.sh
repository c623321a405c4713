#!/usr/bin/env bash
# Start the MLflow tracking server on this project's store. Binds 127.0.0.1 unless told otherwise:
# reach it from another machine through an SSH tunnel (ssh -L 5000:127.0.0.1:5000 host), never by
# binding a public address.
#   bash mlflow/server.sh [--host 127.0.0.1] [--port 5000] [--store sqlite:////abs/path.db]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
host=127.0.0.1 port=5000 store="sqlite:///$here/mlflow.db" artifacts="$here/artifacts"
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --store) store="$2"; shift 2 ;;
    --artifacts) artifacts="$2"; shift 2 ;;
    -h|--help) sed -n 2,6p "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m mlflow server --host "$host" --port "$port" --backend-store-uri "$store" \
  --artifacts-destination "$artifacts"
