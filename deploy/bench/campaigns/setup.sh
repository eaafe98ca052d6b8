#!/usr/bin/env bash
# Creates the Python venv used to benchmark extruct. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../target/bench-venv-campaigns}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys, importlib.metadata as m; sys.exit(0 if m.version("extruct") == "0.18.0" else 1)' 2>/dev/null; then
    echo "extruct 0.18.0 already installed in $venv"
    exit 0
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "python3 venv support missing: run 'apt-get update && apt-get install -y python3-venv'" >&2
    exit 1
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
"$venv/bin/python" -c 'import importlib.metadata as m; print("extruct", m.version("extruct"), "installed in", "'"$venv"'")'
