#!/usr/bin/env bash
# Regenerates tests/fixtures/minilm_reference.json: the all-MiniLM-L6-v2
# embeddings sentence-transformers computes for reference_texts.txt, which the
# Rust embedder is checked against. Needs the weights (fetch-models.sh) and
# the bench venv (setup.sh, run here; a no-op once installed).
set -euo pipefail
cd "$(dirname "$0")/../../.."

bash deploy/scripts/fetch-models.sh
bash deploy/bench/memory/setup.sh
target/bench-venv-memory/bin/python deploy/bench/memory/embed_bench.py \
  --model "${ORCH_MODELS_DIR:-./models}/all-minilm-l6-v2" \
  --texts deploy/bench/memory/reference_texts.txt \
  --batch-size 32 --threads 2 \
  --write-embeddings tests/fixtures/minilm_reference.json
