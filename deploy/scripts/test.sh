#!/usr/bin/env bash
# The whole test suite: starts the services it needs (see test-services.sh),
# fetches the model weights the tests use, builds every binary once, then
# runs every test.
set -euo pipefail
cd "$(dirname "$0")/../.."

bash deploy/scripts/test-services.sh
# The memory tests embed with the real all-MiniLM-L6-v2 weights.
ORCH_MODELS_DIR="$PWD/models" bash deploy/scripts/fetch-models.sh
# playwright-core, pinned in tests/console/package-lock.json, drives chromium.
npm ci --prefix tests/console --no-audit --no-fund --loglevel=error
cargo build --workspace --bins --tests --examples
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

# The API against its own OpenAPI document: schemathesis fuzzes every
# operation of the debug build above (about 1.5 minutes here).
bash deploy/scripts/openapi-fuzz.sh

# The MLX training backend (cargo feature `mlx`) on MLX's CPU build from
# PyPI: built against it and checked against the candle backend.
eval "$(bash deploy/scripts/setup-mlx.sh)"
# Selected as the whole workspace so dependency features resolve as in the
# build above (with -p orchestrator-training alone they resolve for that
# crate only and more of them rebuild: about 10 min here against 6.3).
ORCH_MODELS_DIR="$PWD/models" cargo test --workspace --features orchestrator-training/mlx --lib mlx_backend
