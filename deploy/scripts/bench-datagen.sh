#!/usr/bin/env bash
# Training-data generation, side by side on this machine, one run each:
#   orchestrator: the release API in Redis mode and ONE `orchestrator-worker
#     --queues datagen` process (the queue's default concurrency: 2 shards at
#     a time). Timed end to end: POST /api/v1/datasets -> every shard done
#     (GET /api/v1/datasets/{id} until `completed`) -> both exports
#     (data.jsonl?split=train and ?split=eval) streamed completely to files,
#     their line counts checked against the run's summary.
#   hf-datasets: deploy/bench/datagen/hf_datagen.py, the same eight task
#     families in Python put through Dataset.from_generator -> .filter
#     (length bounds, exact repeats) -> .train_test_split(test_size=0.05)
#     -> .to_json(lines=True) of both splits, same chat format.
# Both use the same defaults: 5% eval, 8..16384 characters, dedup on, seed 0,
# 10,000 examples per shard. The machine has 2 cores: the worker uses both
# (two shards in flight); the peer runs with the library's default, one
# process, unless DATAGEN_NUM_PROC is set (num_proc of from_generator and
# to_json; the dedup filter stays in one process so its `seen` set is global).
# num_proc=2 is not the peer's fastest path here: at 300,000 examples it was
# 8.2-8.6 s against 6.8-8.0 s for the default (generation gains a little,
# to_json of the shuffled split with 2 processes loses more).
# Prints one JSON line per side and a summary with the ratio.
#
#   bash deploy/scripts/bench-datagen.sh [COUNT]          (default 1000000)
#   DATAGEN_NUM_PROC=2 bash deploy/scripts/bench-datagen.sh 1000000
#   ORCH_REDIS_URL=redis://host:6379 bash deploy/scripts/bench-datagen.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

count=${1:-1000000}
redis_url=${ORCH_REDIS_URL:-redis://127.0.0.1:6379}
num_proc=${DATAGEN_NUM_PROC:-}

if ! redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
  bash deploy/scripts/test-services.sh
fi
cargo build --release --quiet -p orchestrator-api -p orchestrator-worker
bash deploy/bench/datagen/setup.sh
python=target/datagen-venv/bin/python

prefix="datagen-bench-$$"
data=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
api="" worker=""
stop() { # pid...: SIGTERM, then wait for each to exit
  for pid in "$@"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
}
cleanup() {
  stop "$worker" "$api"
  redis-cli -u "$redis_url" --scan --pattern "$prefix:*" 2>/dev/null \
    | xargs -r -n 500 redis-cli -u "$redis_url" unlink >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT

# One environment for the API and the worker: Redis queues under a prefix of
# this run's own, and one SQLite store in a temp dir (the API's default file,
# named explicitly because a Redis-mode worker must be told the shared store).
for name in $(compgen -e | grep '^ORCH_' || true); do unset "$name"; done
export ORCH_DATA_DIR="$data/orch" ORCH_MODELS_DIR="$PWD/models" ORCH_HTTP_ADDR="127.0.0.1:$port" \
  ORCH_REDIS_URL="$redis_url" ORCH_REDIS_PREFIX="$prefix" RUST_LOG=warn \
  DATABASE_URL="sqlite://$data/orch/orchestrator.db?mode=rwc"
mkdir -p "$ORCH_DATA_DIR"
target/release/orchestrator-api >"$data/api.log" 2>&1 &
api=$!
for _ in $(seq 1 300); do
  curl -sf "$base/ready" >/dev/null && break
  sleep 0.1
done
curl -sf "$base/ready" >/dev/null || { tail -n 40 "$data/api.log" >&2; exit 1; }
target/release/orchestrator-worker --queues datagen >"$data/worker.log" 2>&1 &
worker=$!
# Wait until the worker has joined the fleet, so its start is not timed.
for _ in $(seq 1 300); do
  curl -sf "$base/api/v1/fleet" | grep -q datagen && break
  kill -0 "$worker" 2>/dev/null || { tail -n 40 "$data/worker.log" >&2; exit 1; }
  sleep 0.1
done
sleep 0.5

echo "# datagen: $count examples, orchestrator (API + 1 worker process, 2 cores)" >&2
status=0
python3 - "$base" "$count" "$data/orch-out" "$api" "$worker" <<'PY' | tee -a "$data/results.jsonl" || status=$?
import json, os, sys, time, urllib.request

base, count, out, api_pid, worker_pid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
os.makedirs(out, exist_ok=True)

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.load(response)

def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)

started = time.perf_counter()
code, run = call("POST", "/api/v1/datasets", {"name": "bench-datagen", "count": count})
assert code == 201, (code, run)
dataset = run["id"]
while run["status"] == "running":
    time.sleep(0.1)
    _, run = call("GET", f"/api/v1/datasets/{dataset}")
generated = time.perf_counter()
if run["status"] != "completed":
    sys.exit(f"run ended {run['status']}: {json.dumps(run)[:2000]}")

lines, sizes = {}, {}
for split in ("train", "eval"):
    path = os.path.join(out, f"{split}.jsonl")
    n = 0
    with urllib.request.urlopen(f"{base}/api/v1/datasets/{dataset}/data.jsonl?split={split}",
                                timeout=600) as response, open(path, "wb") as f:
        while chunk := response.read(1 << 20):
            n += chunk.count(b"\n")
            f.write(chunk)
    lines[split], sizes[split] = n, os.path.getsize(path)
finished = time.perf_counter()

summary = run["summary"]
if (lines["train"], lines["eval"]) != (summary["train"], summary["eval"]):
    sys.exit(f"export lines {lines} differ from the summary {summary}")
examples = lines["train"] + lines["eval"]
seconds = finished - started
print(json.dumps({
    "bench": "datagen",
    "peer": "orchestrator",
    "count": count,
    "examples": examples,
    "train": lines["train"],
    "eval": lines["eval"],
    "seconds": round(seconds, 3),
    "examples_per_s": round(examples / seconds, 1),
    "generate_seconds": round(generated - started, 3),
    "export_seconds": round(finished - generated, 3),
    "shards": run["shards_total"],
    "kept_in_shards": run["kept"],
    "dropped_in_shards": run["dropped"],
    "duplicates_across_shards": summary["duplicates_across_shards"],
    "train_bytes": sizes["train"],
    "eval_bytes": sizes["eval"],
    "worker_peak_rss_mb": peak_rss_mb(worker_pid),
    "api_peak_rss_mb": peak_rss_mb(api_pid),
}), flush=True)
PY
if [ "$status" -ne 0 ]; then
  echo "orchestrator side failed (exit $status); API log tail:" >&2
  tail -n 40 "$data/api.log" >&2
  echo "worker log tail:" >&2
  tail -n 40 "$data/worker.log" >&2
  exit "$status"
fi
# Peak RSS was read above; stop both (and free their output) before the peer
# runs, so it has the 2 cores to itself as they had.
stop "$worker" "$api"
worker="" api=""
rm -rf "$data/orch-out"

echo "# datagen: $count examples, hf-datasets (num_proc ${num_proc:-default})" >&2
"$python" deploy/bench/datagen/hf_datagen.py --count "$count" --out "$data/hf" \
  ${num_proc:+--num-proc "$num_proc"} | tee -a "$data/results.jsonl"

python3 - "$data/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
ours = next(r for r in rows if r["peer"] == "orchestrator")
peer = next(r for r in rows if r["peer"] == "hf-datasets")
print(f"\ndatagen examples/s ({ours['count']:,} asked): orchestrator {ours['examples_per_s']:,.0f}"
      f"  hf-datasets {peer['examples_per_s']:,.0f}"
      f"  ratio {ours['examples_per_s'] / peer['examples_per_s']:.1f}x"
      f"  (kept {ours['examples']:,} vs {peer['examples']:,};"
      f" peak RSS worker {ours['worker_peak_rss_mb']:,.0f} MB + API {ours['api_peak_rss_mb']:,.0f} MB"
      f" vs python {peer['peak_rss_mb']:,.0f} MB)")
PY
