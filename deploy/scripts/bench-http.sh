#!/usr/bin/env bash
# Pushing jobs over HTTP, side by side in one run on one machine, measured
# with wrk (Debian's package):
#   orchestrator, Redis mode: the release API on a fresh key prefix;
#   orchestrator, embedded mode: the same binary on a fresh SQLite file;
#   bullmq: deploy/bench/bullmq/http-server.mjs, a minimal Node HTTP server
#     (one process per core) calling Queue.add / Queue.addBulk on the same
#     Redis.
# Each side gets: single-job POSTs from CONNS concurrent connections (wrk's
# latency percentiles included), the same from one connection (the latency
# of a lone push), and batches of BATCH jobs from BATCH_CONNS connections.
# Jobs go to a queue nobody consumes, so only pushing is timed. Prints one
# JSON line per measurement and a summary; any non-2xx answer fails the run.
#
#   bash deploy/scripts/bench-http.sh            (SECONDS_PER_RUN=10 CONNS=64 BATCH=10000 BATCH_CONNS=4)
#   ORCH_REDIS_URL=redis://host:6379 bash deploy/scripts/bench-http.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=${SECONDS_PER_RUN:-10}
conns=${CONNS:-64}
batch=${BATCH:-10000}
batch_conns=${BATCH_CONNS:-4}
threads=${WRK_THREADS:-2}
redis_url=${ORCH_REDIS_URL:-redis://127.0.0.1:6379}

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
  else
    echo "bench-http.sh needs wrk: sudo apt-get install wrk" >&2
    exit 1
  fi
fi
if ! redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
  bash deploy/scripts/test-services.sh
fi
command -v node >/dev/null || { echo "bench-http.sh needs Node.js (apt-get install nodejs npm)" >&2; exit 1; }
(cd deploy/bench/bullmq && npm install --no-audit --no-fund --loglevel=error >/dev/null)
cargo build --release --quiet --bin orchestrator-api

prefix="http-bench-$$"
data=$(mktemp -d)
server=""
stop() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; server=""; }
cleanup() {
  stop
  # Ours are under the prefix; BullMQ's under bull:QUEUE.
  for pattern in "$prefix*" "bull:$prefix-bullmq*"; do
    redis-cli -u "$redis_url" --scan --pattern "$pattern" 2>/dev/null \
      | xargs -r -n 500 redis-cli -u "$redis_url" unlink >/dev/null 2>&1 || true
  done
  rm -rf "$data"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() { # url log
  for _ in $(seq 1 300); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  tail -n 40 "$2" >&2
  exit 1
}

# wrk scripts: one job per request, and BATCH jobs per request.
cat >"$data/single.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"queue":"bench","payload":{"n":1}}'
LUA
python3 - "$batch" >"$data/batch.lua" <<'PY'
import json, sys
n = int(sys.argv[1])
body = json.dumps({"jobs": [{"queue": "bench", "payload": {"n": i}} for i in range(n)]})
print('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"')
print("wrk.body = " + json.dumps(body))
PY

# measure SIDE WHAT URL SCRIPT CONNS JOBS_PER_REQUEST
measure() {
  local out="$data/wrk.txt"
  # A 10,000-job batch may take over wrk's default 2 s timeout on a slow
  # side: it is measured (latency percentiles), not counted as an error.
  wrk -t "$(( $5 < threads ? $5 : threads ))" -c "$5" -d "${duration}s" --timeout 30s --latency -s "$4" "$3" >"$out"
  python3 - "$1" "$2" "$5" "$6" "$out" <<'PY' | tee -a "$data/results.jsonl"
import json, re, sys
side, what, conns, per, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
text = open(path).read()
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = re.search(r"Socket errors: (.*)", text)
if bad or errors:
    sys.exit(f"{side} {what}: {text}")
def ms(p):
    value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
    return round(float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit], 3)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
print(json.dumps({"bench": "http-push", "side": side, "what": what, "connections": conns,
                  "jobs_per_request": per, "requests_per_s": round(rps),
                  "jobs_per_s": round(rps * per), "p50_ms": ms(50), "p99_ms": ms(99)}))
PY
}
clean_env() { for name in $(compgen -e | grep '^ORCH_\|^DATABASE_URL$' || true); do unset "$name"; done; }

# orchestrator MODE: the API on a fresh data directory (and key prefix).
orchestrator() {
  local mode=$1 port
  port=$(free_port)
  mkdir -p "$data/$mode"
  (
    clean_env
    export ORCH_DATA_DIR="$data/$mode" ORCH_HTTP_ADDR="127.0.0.1:$port" RUST_LOG=warn
    [ "$mode" = redis ] && export ORCH_REDIS_URL="$redis_url" ORCH_REDIS_PREFIX="$prefix"
    exec target/release/orchestrator-api
  ) >"$data/$mode.log" 2>&1 &
  server=$!
  local base="http://127.0.0.1:$port"
  wait_up "$base/ready" "$data/$mode.log"
  curl -sf -X POST "$base/api/v1/queues" -H 'content-type: application/json' \
    -d '{"name": "bench", "handler": "external"}' >/dev/null
  local side="orchestrator-$mode"
  measure "$side" health "$base/health" /dev/null "$conns" 0
  measure "$side" single "$base/api/v1/jobs" "$data/single.lua" "$conns" 1
  measure "$side" single-1-conn "$base/api/v1/jobs" "$data/single.lua" 1 1
  measure "$side" batch "$base/api/v1/jobs/batch" "$data/batch.lua" "$batch_conns" "$batch"
  curl -sf "$base/api/v1/queues" >"$data/queues.json"
  python3 - "$side" "$data/queues.json" >&2 <<'PY'
import json, sys
queues = json.load(open(sys.argv[2]))
queues = queues["queues"] if isinstance(queues, dict) else queues
bench = next(q for q in queues if q["name"] == "bench")
print(f"# {sys.argv[1]}: {bench['pending']:,} jobs pending after the runs")
PY
  stop
}

bullmq() {
  local port
  port=$(free_port)
  node deploy/bench/bullmq/http-server.mjs --port "$port" --redis "$redis_url" --queue "$prefix-bullmq" \
    >"$data/bullmq.log" 2>&1 &
  server=$!
  local base="http://127.0.0.1:$port"
  for _ in $(seq 1 300); do curl -s -o /dev/null "$base/" && break; sleep 0.1; done
  measure bullmq single "$base/job" "$data/single.lua" "$conns" 1
  measure bullmq single-1-conn "$base/job" "$data/single.lua" 1 1
  measure bullmq batch "$base/bulk" "$data/batch.lua" "$batch_conns" "$batch"
  stop
}

echo "# HTTP pushes: ${duration}s per run, wrk $threads threads; $conns connections single, $batch_conns x $batch-job batches" >&2
orchestrator redis
bullmq
orchestrator embedded

python3 - "$data/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
get = lambda side, what: next(r for r in rows if r["side"] == side and r["what"] == what)
print()
print(f"{'':34}{'orch. Redis':>14}{'bullmq':>14}{'orch. embedded':>16}")
for what, label in [("single", "single POST, jobs/s"), ("batch", "batch POST, jobs/s")]:
    o, b, e = get("orchestrator-redis", what), get("bullmq", what), get("orchestrator-embedded", what)
    print(f"{label:34}{o['jobs_per_s']:>14,}{b['jobs_per_s']:>14,}{e['jobs_per_s']:>16,}")
    print(f"{'  p50 / p99 ms':34}{o['p50_ms']:>7} /{o['p99_ms']:>5}{b['p50_ms']:>7} /{b['p99_ms']:>5}{e['p50_ms']:>9} /{e['p99_ms']:>5}")
o, b, e = get("orchestrator-redis", "single-1-conn"), get("bullmq", "single-1-conn"), get("orchestrator-embedded", "single-1-conn")
print(f"{'one connection: p50 / p99 ms':34}{o['p50_ms']:>7} /{o['p99_ms']:>5}{b['p50_ms']:>7} /{b['p99_ms']:>5}{e['p50_ms']:>9} /{e['p99_ms']:>5}")
print(f"{'GET /health, requests/s':34}{get('orchestrator-redis', 'health')['requests_per_s']:>14,}")
PY
