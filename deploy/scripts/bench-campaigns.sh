#!/usr/bin/env bash
# Campaign benchmarks, side by side on this machine: schema.org extraction
# by orchestrator-campaign-bench vs extruct 0.18 (PyPI, venv built by
# deploy/bench/campaigns/setup.sh) on the same generated corpus (~7 KB
# pages mixing JSON-LD, microdata and RDFa; every 20th page also carries one
# of the constructs where the two deliberately differ, DIVERGENCES.md), with
# a per-page check that both find the same types and property counts: every
# page that differs is listed with its construct and what each side found,
# expected divergences (the page's construct predicts them) are counted
# apart from unexpected ones, and the run fails (non-zero exit) on any
# unexpected one, or when extruct crashes or its output misses pages. Then
# end-to-end campaign pages/s (loopback fetch, robots.txt, extraction,
# SQLite store, queue) with 1, 2 and 4 workers. Prints JSON lines.
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
"$bench" corpus --pages "$pages" --dir "$dir" >&2
if ! "$venv/bin/python" deploy/bench/campaigns/extruct_bench.py "$dir" https://shop.example \
  "$dir/extruct_summary.json"; then
  echo "bench-campaigns: FAILED: extruct_bench.py exited with an error; no comparison" >&2
  exit 1
fi
"$venv/bin/python" - "$dir/extruct_summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(json.dumps({"bench": "extract", "engine": "extruct 0.18.0", "threads": 1,
                  "pages": s["page_count"], "raised": s["errors"],
                  "pages_per_s_1_thread": round(s["pages_per_sec"])}))
PY
if ! "$bench" extract --pages "$pages" --dir "$dir" --extruct-summary "$dir/extruct_summary.json" \
  | tee "$dir/ours.json"; then
  echo "bench-campaigns: FAILED: the extractors disagree beyond DIVERGENCES.md, or extruct's output is missing or incomplete (see above)" >&2
  exit 1
fi
"$venv/bin/python" - "$dir/ours.json" "$dir/extruct_summary.json" <<'PY'
import json, sys
ours, theirs = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print(json.dumps({"summary": "extract, 1 thread each", "ours_pages_per_s": ours["pages_per_s_1_thread"],
                  "extruct_pages_per_s": round(theirs["pages_per_sec"]),
                  "ratio": round(ours["pages_per_s_1_thread"] / theirs["pages_per_sec"], 1)}))
PY

echo "== end to end: a seo_mining campaign over the corpus on loopback" >&2
"$bench" crawl --pages "$pages" --workers 1,2,4
