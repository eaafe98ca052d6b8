#!/usr/bin/env bash
# Latency of GET /api/v1/status while the fleet runs a queue load: the
# release API on a Redis prefix, `orchestrator-bench e2e` pushing no-op jobs
# through worker processes on the same prefix, and wrk asking for the
# status as fast as it can meanwhile. Prints wrk's latency distribution and
# one JSON line with p50/p99, status requests/s and the jobs/s the status
# itself reported during the load.
#
#   bash deploy/scripts/bench-status.sh [JOBS] [WORKERS]   (default 2000000 2)
set -euo pipefail
cd "$(dirname "$0")/../.."

jobs=${1:-2000000}
workers=${2:-2}
redis_url=${ORCH_REDIS_URL:-redis://127.0.0.1:6379}

if ! redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
  bash deploy/scripts/test-services.sh
fi
if ! command -v wrk >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet -p orchestrator-tests -p orchestrator-worker -p orchestrator-api

prefix="status-bench-$$"
data=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
for name in $(compgen -e | grep '^ORCH_' || true); do unset "$name"; done
ORCH_DATA_DIR="$data" ORCH_MODELS_DIR="$PWD/models" ORCH_HTTP_ADDR="127.0.0.1:$port" \
  ORCH_REDIS_URL="$redis_url" ORCH_REDIS_PREFIX="$prefix" RUST_LOG=warn \
  target/release/orchestrator-api >"$data/api.log" 2>&1 &
api=$!
bench=""
cleanup() {
  [ -n "$bench" ] && kill "$bench" 2>/dev/null || true
  kill "$api" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 1 300); do
  curl -sf "$base/ready" >/dev/null && break
  sleep 0.1
done
curl -sf "$base/ready" >/dev/null || { cat "$data/api.log" >&2; exit 1; }

target/release/orchestrator-bench --redis-url "$redis_url" e2e --jobs "$jobs" \
  --workers "$workers" --prefix "$prefix" >"$data/bench.json" &
bench=$!
# Let the workers start and the load reach its pace.
sleep 4
# The status's own view of the load, late in wrk's run (its 10 s window full of load).
(sleep 8; curl -s "$base/api/v1/status" >"$data/status.json") &
wrk -t1 -c8 -d10s --latency "$base/api/v1/status" | tee "$data/wrk.txt"
wait "$bench"
bench=""
cat "$data/bench.json"

python3 - "$data/wrk.txt" "$data/status.json" "$data/bench.json" <<'PY'
import json, re, sys
wrk = open(sys.argv[1]).read()
def ms(label):
    m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", wrk, re.M)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", wrk).group(1))
status = json.load(open(sys.argv[2]))
bench = json.loads(open(sys.argv[3]).read().strip().splitlines()[-1])
print(json.dumps({
    "bench": "status_latency",
    "p50_ms": round(ms("50%"), 3), "p99_ms": round(ms("99%"), 3),
    "status_requests_per_s": round(rps),
    "jobs_per_s_reported_by_status_10s": round(status["throughput"]["jobs_per_s_10s"]),
    "load_end_to_end_jobs_per_s": bench["end_to_end_per_s"],
}))
PY
