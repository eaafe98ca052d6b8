#!/usr/bin/env bash
# Side-by-side queue benchmark against one Redis: Master Orchestrator's
# engine and BullMQ (npm package, installed here), same job count, same
# machine, one run. Prints JSON lines and a summary with the ratio.
#
#   bash deploy/scripts/bench.sh [JOBS]        (default 200000)
#   ORCH_REDIS_URL=redis://host:6379 bash deploy/scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

jobs=${1:-200000}
redis_url=${ORCH_REDIS_URL:-redis://127.0.0.1:6379}
export ORCH_REDIS_URL=$redis_url

if ! redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
  bash deploy/scripts/test-services.sh
fi
command -v node >/dev/null || { echo "bench.sh needs Node.js (apt-get install nodejs npm)" >&2; exit 1; }
(cd deploy/bench/bullmq && npm install --no-audit --no-fund --loglevel=error >/dev/null)
cargo build --release --quiet -p orchestrator-tests -p orchestrator-worker
bench=target/release/orchestrator-bench

out=$(mktemp)
trap 'rm -f "$out"' EXIT
run() { "$@" | tee -a "$out"; }

echo "# end to end: one producer, one worker process, $jobs no-op jobs (3 rounds, alternating)"
for _ in 1 2 3; do
  run $bench e2e --jobs "$jobs" --workers 1
  run node deploy/bench/bullmq/bench.mjs --jobs "$jobs" --workers 1 --redis "$redis_url"
done
echo "# scale-out: 2 and 4 worker processes"
run $bench e2e --jobs "$jobs" --workers 2
run $bench e2e --jobs "$jobs" --workers 4
echo "# backlog drain, in-process worker (embedded SQLite and Redis)"
run $bench backlog --jobs "$jobs"
echo "# idle worker: push-to-start latency"
run $bench latency --samples 1000
echo "# Redis memory per pending job, 1,000,000 waiting"
run $bench footprint --jobs 1000000
run node deploy/bench/bullmq/bench.mjs --footprint 1000000 --redis "$redis_url"

python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
def find(**kv):
    return next(r for r in rows if all(r.get(k) == v for k, v in kv.items()))
def median(**kv):
    values = sorted(r["end_to_end_per_s"] for r in rows if all(r.get(k) == v for k, v in kv.items()))
    return values[len(values) // 2]
ours = median(bench="e2e", workers=1)
peer = median(peer="bullmq", workers=1)
mem_ours = find(bench="footprint")["bytes_per_job"]
mem_peer = next(r for r in rows if r.get("peer") == "bullmq" and "bytes_per_job" in r)["bytes_per_job"]
print(f"\nend to end jobs/s (median of 3): orchestrator {ours:,.0f}  bullmq {peer:,.0f}  ratio {ours / peer:.1f}x")
print(f"bytes per pending job: orchestrator {mem_ours:,.0f}  bullmq {mem_peer:,.0f}")
PY
