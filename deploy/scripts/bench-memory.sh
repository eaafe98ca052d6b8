#!/usr/bin/env bash
# Memory benchmarks, side by side on this machine and the same data:
#   embeddings/s: our candle embedder vs sentence-transformers (PyTorch CPU),
#     on chunks of this repository's own sources and docs;
#   search: our embedded index (exact and HNSW) vs faiss-cpu (IndexFlatIP and
#     IndexHNSWFlat, same M and efConstruction) on clustered unit vectors,
#     queries/s one query at a time and recall@10 against exact search.
# Usage: bench-memory.sh [TEXTS] [VECTOR COUNTS...]  (default: 2000 100000)
#   e.g. bench-memory.sh 2000 100000 1000000
set -euo pipefail
cd "$(dirname "$0")/../.."

texts_count="${1:-2000}"
shift || true
counts=("${@:-100000}")
[[ ${#counts[@]} -eq 0 ]] && counts=(100000)
out=target/bench-memory
models="${ORCH_MODELS_DIR:-./models}"
python=target/bench-venv-memory/bin/python
mkdir -p "$out"

bash deploy/scripts/fetch-models.sh
bash deploy/bench/memory/setup.sh
cargo build --release --quiet -p orchestrator-tests --bin orchestrator-memory-bench
bench=target/release/orchestrator-memory-bench

echo "== embeddings/s, ${texts_count} texts, 2 threads" >&2
"$bench" texts --count "$texts_count" --out "$out/texts.txt"
for round in 1 2; do
  "$bench" embed --texts "$out/texts.txt" --models-dir "$models"
  "$python" deploy/bench/memory/embed_bench.py --model "$models/all-minilm-l6-v2" \
    --texts "$out/texts.txt" --batch-size 32 --threads 2
done

for n in "${counts[@]}"; do
  echo "== search, $n vectors, 1000 queries" >&2
  "$bench" search --n "$n" --queries 1000 --out "$out/vectors-$n"
  "$python" deploy/bench/memory/faiss_bench.py --base "$out/vectors-$n/base.f32" \
    --queries "$out/vectors-$n/queries.f32" --dim 384 --k 10 --threads 2 \
    --gt-out "$out/vectors-$n/faiss-gt.u32"
  # Both exact searches must agree on the neighbours.
  cmp -s "$out/vectors-$n/gt.u32" "$out/vectors-$n/faiss-gt.u32" \
    && echo '{"check":"exact results identical to faiss"}' \
    || echo '{"check":"exact results differ from faiss (ties or float order)"}'
done
