#!/usr/bin/env bash
# Fuzzes the running API against its own OpenAPI document with schemathesis
# (pinned in deploy/test/requirements-fuzz.txt, installed into
# target/fuzz-venv): every operation gets schema-made and schema-breaking
# requests, and every answer must be documented (status, content type,
# headers, body schema) and never a 5xx.
#
# Starts the already-built debug target/debug/orchestrator-api (build it
# with `cargo build --workspace --bins` first) in embedded mode on a free
# loopback port with a fresh data dir and API keys, so 401s are exercised
# too; stops it at the end. Exits non-zero on any failure.
#
# Environment: FUZZ_SEED (default 1: the same requests every run; change it
# to explore), FUZZ_EXAMPLES (cases per operation and phase, default 250).
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/fuzz-venv
requirements=deploy/test/requirements-fuzz.txt
# The debug build test.sh made (in CARGO_TARGET_DIR when that is set).
binary=${CARGO_TARGET_DIR:-target}/debug/orchestrator-api
seed=${FUZZ_SEED:-1}
examples=${FUZZ_EXAMPLES:-250}

if [ ! -x "$binary" ]; then
  echo "openapi-fuzz: $binary is missing; run cargo build --workspace --bins" >&2
  exit 1
fi

# The venv, (re)installed when the pins change. Debian's python3 needs
# python3-venv for `python3 -m venv`.
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

data=$(mktemp -d)
port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key="fuzz-$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(16))')"
base="http://127.0.0.1:$port"

# Only what this script sets: no ORCH_* leaking in from the shell.
for name in $(compgen -e | grep '^ORCH_' || true); do unset "$name"; done
# --no-workers and ORCH_NO_TRAINER: what the fuzzer queues stays queued.
# Campaign workers would crawl the URLs it makes up, workflow tasks would
# run the model for minutes, and the trainer would train; the routes are
# all fuzzed all the same, only the background work is not started.
ORCH_DATA_DIR="$data" ORCH_MODELS_DIR="$PWD/models" ORCH_HTTP_ADDR="127.0.0.1:$port" \
  ORCH_API_KEYS="$key" ORCH_NO_TRAINER=true \
  "$binary" --no-workers >"$data/api.log" 2>&1 &
api=$!
stop() {
  kill "$api" 2>/dev/null || true
  wait "$api" 2>/dev/null || true
  rm -rf "$data"
}
trap stop EXIT

for _ in $(seq 1 600); do
  if "$venv/bin/python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
    "$base/ready" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$api" 2>/dev/null; then
    echo "openapi-fuzz: orchestrator-api exited:" >&2
    cat "$data/api.log" >&2
    exit 1
  fi
  sleep 0.1
done

checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_headers_conformance,response_schema_conformance
checks+=,negative_data_rejection,unsupported_method,ignored_auth
checks+=,use_after_free,ensure_resource_availability
# Run in target/openapi-fuzz, where schemathesis keeps its cache
# (.schemathesis, for `st replay`) and the JUnit report.
work=target/openapi-fuzz
mkdir -p "$work"
fuzz() {
  (cd "$work" && "$OLDPWD/$venv/bin/schemathesis" "$@" \
    --url "$base" \
    --header "Authorization: Bearer $key" \
    --checks "$checks" \
    --seed "$seed" \
    --generation-database none \
    --request-timeout 60 \
    --workers 2 \
    --no-color)
}

echo "openapi-fuzz: fuzzing $base (seed $seed, $examples examples per operation)"
status=0
# Every operation, every phase (examples, coverage, fuzzing, stateful);
# deploy/test/schemathesis.toml narrows chat completions to
# schema-breaking requests.
# The stop routes are left for last: once the system is stopped, every
# route that takes in work answers 503 system_stopped. The event stream
# (/api/v1/events) never ends, so a fuzzer reading its answer would wait
# forever: tests/tests/operations.rs reads it instead.
fuzz --config-file "$PWD/deploy/test/schemathesis.toml" run "$base/api/openapi.json" \
  --exclude-path /api/v1/system/stop --exclude-path /api/master/stop \
  --exclude-path /api/v1/events \
  --max-examples "$examples" \
  --report junit --report-dir . || status=$?
# Chat completions' documented examples, answered by the model.
fuzz run "$base/api/openapi.json" --include-path /v1/chat/completions \
  --phases examples || status=$?
fuzz run "$base/api/openapi.json" \
  --include-path /api/v1/system/stop --include-path /api/master/stop \
  --max-examples 25 || status=$?
if [ "$status" -ne 0 ]; then
  echo "openapi-fuzz: failed; the API's log:" >&2
  tail -n 50 "$data/api.log" >&2
fi
exit "$status"
