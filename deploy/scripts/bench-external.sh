#!/usr/bin/env bash
# External workers side by side, one run each, same Redis, same machine:
#   orchestrator: the release API in Redis mode (a fresh key prefix), N jobs
#     pushed to an `external` queue in batches of 10,000, then drained by
#     PROCS processes of clients/python/example_worker.py (CONCURRENCY
#     handler threads each, leasing BATCH jobs per call, one ack call per
#     job) over HTTP.
#   bullmq: BullMQ's Python package (pinned, in target/external-bench-venv),
#     the same N jobs added with Queue.addBulk in chunks of 1,000, then
#     drained by PROCS processes each running one bullmq Worker with the
#     same CONCURRENCY, straight against Redis.
# Both handlers do the same work (return {"n", "square"}), both run on the
# same Python, and both are timed from starting the worker processes until
# the N-th job is done (polled every 50 ms). Prints one JSON line per side
# and a summary.
#
#   bash deploy/scripts/bench-external.sh [JOBS]        (default 50000)
#   PROCS=4 CONCURRENCY=4 BATCH=100 bash deploy/scripts/bench-external.sh
#   ORCH_REDIS_URL=redis://host:6379 bash deploy/scripts/bench-external.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

jobs=${1:-50000}
procs=${PROCS:-4}
concurrency=${CONCURRENCY:-4}
batch=${BATCH:-100}
redis_url=${ORCH_REDIS_URL:-redis://127.0.0.1:6379}
bullmq_version=3.4.4

if ! redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
  bash deploy/scripts/test-services.sh
fi
cargo build --release --quiet --bin orchestrator-api

# The peer's venv: BullMQ for Python, pinned; rebuilt when the pin changes.
venv=target/external-bench-venv
if [[ "$(cat "$venv/.bullmq-version" 2>/dev/null)" != "$bullmq_version" ]]; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "python3 venv support missing: run 'apt-get update && apt-get install -y python3-venv'" >&2
    exit 1
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "bullmq==$bullmq_version"
  echo "$bullmq_version" >"$venv/.bullmq-version"
fi
python=$venv/bin/python

prefix="external-bench-$$"
data=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
api="" workers=()
stop() { # pid...: SIGTERM, then wait for each to exit
  for pid in "$@"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
}
cleanup() {
  stop "${workers[@]}" "$api"
  redis-cli -u "$redis_url" --scan --pattern "$prefix*" 2>/dev/null \
    | xargs -r -n 500 redis-cli -u "$redis_url" unlink >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT

# The drivers: push, wait for the count of done jobs, and the BullMQ worker.
cat >"$data/bench.py" <<'PY'
import asyncio, json, os, signal, sys, time

sys.path.insert(0, "clients/python")

def orchestrator_push(base, count):
    from orchestrator_client import Client
    client = Client(base)
    client.create_queue("bench", max_attempts=3)
    started = time.perf_counter()
    client.push_batch("bench", ({"n": n} for n in range(count)))
    print(round(time.perf_counter() - started, 3))

def orchestrator_wait(base, count):
    from orchestrator_client import Client
    client = Client(base)
    while client.queue("bench")["done"] < count:
        time.sleep(0.05)

async def bullmq_push(redis, prefix, count):
    from bullmq import Queue
    queue = Queue("bench", {"connection": redis, "prefix": prefix})
    started = time.perf_counter()
    for first in range(0, count, 1000):
        chunk = range(first, min(first + 1000, count))
        await queue.addBulk([{"name": "job", "data": {"n": n}} for n in chunk])
    print(round(time.perf_counter() - started, 3))
    await queue.close()

async def bullmq_wait(redis, prefix, count):
    from bullmq import Queue
    queue = Queue("bench", {"connection": redis, "prefix": prefix})
    while (await queue.getJobCounts("completed"))["completed"] < count:
        await asyncio.sleep(0.05)
    await queue.close()

async def bullmq_work(redis, prefix, concurrency):
    from bullmq import Worker
    async def handle(job, token):
        n = job.data["n"]
        return {"n": n, "square": n * n}
    worker = Worker("bench", handle, {"connection": redis, "prefix": prefix,
                                      "concurrency": concurrency})
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopped.set)
    await stopped.wait()
    await worker.close()

command, *args = sys.argv[1:]
args = [int(arg) if arg.isdigit() else arg for arg in args]
task = globals()[command.replace("-", "_")](*args)
if asyncio.iscoroutine(task):
    asyncio.run(task)
PY

for name in $(compgen -e | grep '^ORCH_' || true); do unset "$name"; done
export ORCH_DATA_DIR="$data/orch" ORCH_HTTP_ADDR="127.0.0.1:$port" \
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

# seconds since the epoch, with fractions
now() { date +%s.%N; }
report() { # peer push_seconds drain_seconds
  python3 -c 'import json, sys
peer, push, drain, jobs, procs, conc, batch = sys.argv[1:]
print(json.dumps({"bench": "external-workers", "peer": peer, "jobs": int(jobs), "processes": int(procs),
                  "concurrency": int(conc), "batch": int(batch) if batch else None,
                  "push_seconds": float(push), "push_per_s": round(int(jobs) / float(push)),
                  "drain_seconds": round(float(drain), 3), "jobs_per_s": round(int(jobs) / float(drain))}))' \
    "$1" "$2" "$3" "$jobs" "$procs" "$concurrency" "${4:-}" | tee -a "$data/results.jsonl"
}

echo "# external workers: $jobs jobs, orchestrator ($procs Python processes x $concurrency threads, lease batch $batch)" >&2
push=$("$python" "$data/bench.py" orchestrator-push "$base" "$jobs")
started=$(now)
workers=()
for i in $(seq 1 "$procs"); do
  "$python" clients/python/example_worker.py --url "$base" --queue bench --name "bench-$i" \
    --concurrency "$concurrency" --batch "$batch" --wait-ms 1000 >>"$data/workers.log" 2>&1 &
  workers+=($!)
done
"$python" "$data/bench.py" orchestrator-wait "$base" "$jobs"
drain=$(python3 -c "print($(now) - $started)")
stop "${workers[@]}"
workers=()
report orchestrator "$push" "$drain" "$batch"
cat "$data/workers.log" >&2
stop "$api"
api=""

echo "# external workers: $jobs jobs, bullmq $bullmq_version ($procs Python processes x concurrency $concurrency)" >&2
push=$("$python" "$data/bench.py" bullmq-push "$redis_url" "$prefix-bullmq" "$jobs")
started=$(now)
for _ in $(seq 1 "$procs"); do
  "$python" "$data/bench.py" bullmq-work "$redis_url" "$prefix-bullmq" "$concurrency" >>"$data/bullmq.log" 2>&1 &
  workers+=($!)
done
"$python" "$data/bench.py" bullmq-wait "$redis_url" "$prefix-bullmq" "$jobs"
drain=$(python3 -c "print($(now) - $started)")
stop "${workers[@]}"
workers=()
report bullmq "$push" "$drain"

python3 - "$data/results.jsonl" <<'PY'
import json, sys
rows = {r["peer"]: r for r in map(json.loads, open(sys.argv[1]))}
ours, peer = rows["orchestrator"], rows["bullmq"]
print(f"\nexternal workers, {ours['jobs']:,} jobs, {ours['processes']} Python processes:"
      f" orchestrator {ours['jobs_per_s']:,} jobs/s (HTTP lease batch {ours['batch']}, one ack per job)"
      f"  bullmq {peer['jobs_per_s']:,} jobs/s (direct to Redis)"
      f"  ratio {ours['jobs_per_s'] / peer['jobs_per_s']:.2f}x;"
      f" push {ours['push_per_s']:,}/s vs addBulk {peer['push_per_s']:,}/s")
PY
