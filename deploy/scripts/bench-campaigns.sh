#!/usr/bin/env bash
# Campaign benchmarks, side by side on this machine: schema.org extraction
# by orchestrator-campaign-bench vs extruct 0.18 (PyPI, venv built by
# deploy/bench/campaigns/setup.sh) on the same generated corpus (~7 KB
# pages mixing JSON-LD, microdata and RDFa), with a per-page check that both
# find the same types and property counts; then end-to-end campaign pages/s
# (loopback fetch, robots.txt, extraction, SQLite store, queue) with 1, 2
# and 4 workers. Prints JSON lines.
# Usage: bench-campaigns.sh [PAGES]  (default 2000)
set -euo pipefail
cd "$(dirname "$0")/../.."

pages="${1:-2000}"
venv=target/bench-venv-campaigns
dir="target/bench-campaigns/corpus-$pages"

bash deploy/bench/campaigns/setup.sh "$venv" >&2
cargo build --release --quiet -p orchestrator-tests --bin orchestrator-campaign-bench
bench=target/release/orchestrator-campaign-bench

echo "== extraction: $pages pages" >&2
rm -f "$dir/extruct_summary.json"
"$bench" extract --pages "$pages" --dir "$dir" >/dev/null # writes the corpus
"$venv/bin/python" deploy/bench/campaigns/extruct_bench.py "$dir" https://shop.example \
  "$dir/extruct_summary.json" >&2
"$venv/bin/python" - "$dir/extruct_summary.json" <<'PY'
import json, sys
print(json.dumps({"bench": "extract", "engine": "extruct 0.18.0",
                  "pages_per_s_1_thread": round(json.load(open(sys.argv[1]))["pages_per_sec"])}))
PY
"$bench" extract --pages "$pages" --dir "$dir"

echo "== end to end: a seo_mining campaign over the corpus on loopback" >&2
"$bench" crawl --pages "$pages" --workers 1,2,4
