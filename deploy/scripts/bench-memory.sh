#!/usr/bin/env bash
# Memory benchmarks, side by side on this machine and the same data:
#   embeddings/s: our candle embedder vs sentence-transformers (PyTorch CPU),
#     on chunks of this repository's own sources and docs;
#   search: our embedded index (exact and HNSW) vs faiss-cpu (IndexFlatIP and
#     IndexHNSWFlat, same M and efConstruction) on clustered unit vectors,
#     queries/s one query at a time and recall@10 against exact search.
# Threads: 2 on each side. Ours: RAYON_NUM_THREADS=2 (the encoder's matrix
# products and attention, the exact scan and the HNSW build all run on
# rayon's pool). Peers: OMP_NUM_THREADS=2 (and OPENBLAS/MKL) for every
# native pool, torch.set_num_threads(2) / set_num_interop_threads(2), and
# faiss.omp_set_num_threads(2). Every JSON line prints "threads".
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
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2

bash deploy/scripts/fetch-models.sh
bash deploy/bench/memory/setup.sh
cargo build --release --quiet -p orchestrator-tests --bin orchestrator-memory-bench
bench=target/release/orchestrator-memory-bench

# Every JSON line also goes to $results, which the summary at the end reads.
results="$out/results.jsonl"
: >"$results"

echo "== embeddings/s, ${texts_count} texts, 2 threads" >&2
"$bench" texts --count "$texts_count" --out "$out/texts.txt"
for round in 1 2; do
  "$bench" embed --texts "$out/texts.txt" --models-dir "$models" | tee -a "$results"
  "$python" deploy/bench/memory/embed_bench.py --model "$models/all-minilm-l6-v2" \
    --texts "$out/texts.txt" --batch-size 32 --threads 2 | tee -a "$results"
done

for n in "${counts[@]}"; do
  echo "== search, $n vectors, 1000 queries" >&2
  "$bench" search --n "$n" --queries 1000 --out "$out/vectors-$n" | tee -a "$results"
  "$python" deploy/bench/memory/faiss_bench.py --base "$out/vectors-$n/base.f32" \
    --queries "$out/vectors-$n/queries.f32" --dim 384 --k 10 --threads 2 \
    --gt-out "$out/vectors-$n/faiss-gt.u32" | tee -a "$results"
  # Both exact searches must agree on the neighbours.
  if cmp -s "$out/vectors-$n/gt.u32" "$out/vectors-$n/faiss-gt.u32"; then
    echo "{\"check\":\"exact results identical to faiss\",\"n\":$n}"
  else
    echo "{\"check\":\"exact results differ from faiss (ties or float order)\",\"n\":$n}"
  fi | tee -a "$results"
done

# The ratios the README quotes, from the lines above.
"$python" - "$results" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = [l for l in lines if l.get("bench") == "embed"]
peer = [l for l in lines if l.get("peer") == "sentence-transformers"]
for r, (a, b) in enumerate(zip(ours, peer), 1):
    print(json.dumps({"summary": "embed", "round": r, "threads": [a["threads"], b["threads"]],
                      "ours_per_s": round(a["embeddings_per_s"], 1),
                      "sentence_transformers_per_s": round(b["embeddings_per_s"], 1),
                      "ratio": round(a["embeddings_per_s"] / b["embeddings_per_s"], 2)}))
searches = [l for l in lines if l.get("bench") == "search"]
faiss = {l["n"]: l for l in lines if l.get("peer") == "faiss-cpu"}
for a in searches:
    b = faiss.get(a["n"])
    if b is None:
        continue
    by_ef = {r["ef_search"]: r for r in b["hnsw"]["runs"]}
    print(json.dumps({
        "summary": "search", "n": a["n"], "threads": [a["threads"], b["threads"]],
        "exact_qps_ratio": round(a["exact"]["qps_single"] / b["flat"]["qps_single"], 2),
        "build_s_ratio": round(a["hnsw"]["build_s"] / b["hnsw"]["build_s"], 2),
        "hnsw_qps_ratio_by_ef": {r["ef_search"]: round(r["qps_single"] / by_ef[r["ef_search"]]["qps_single"], 2)
                                 for r in a["hnsw"]["runs"] if r["ef_search"] in by_ef},
        "recall_ours_faiss_by_ef": {r["ef_search"]: [r["recall_at_10"], round(by_ef[r["ef_search"]]["recall_at_10"], 3)]
                                    for r in a["hnsw"]["runs"] if r["ef_search"] in by_ef},
    }))
PY
