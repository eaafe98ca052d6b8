#!/usr/bin/env bash
# Build times of the workspace, as a developer and CI see them:
#   clean: `cargo build --workspace --bins --tests` and
#          `cargo build --release --workspace` from an empty target dir;
#   incremental: a dev build (bins and tests) after one comment line is
#          appended to a file, from a fully built tree each time.
# Usage: bench-build.sh [--clean] FILE...   (run from a clone you may dirty;
# --clean deletes ./target first)
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds() { local start=$SECONDS; "$@" >/dev/null 2>&1; echo $((SECONDS - start)); }

if [[ "${1:-}" == "--clean" ]]; then
  shift
  rm -rf target
  echo "clean dev build (bins + tests): $(seconds cargo build --workspace --bins --tests) s"
  echo "clean release build: $(seconds cargo build --release --workspace) s"
fi
cargo build --workspace --bins --tests --quiet
for file in "$@"; do
  cp "$file" "$file.bench-build"
  echo "// touched $(date +%s%N)" >>"$file"
  took=$(seconds cargo build --workspace --bins --tests)
  mv "$file.bench-build" "$file"
  echo "incremental after touching $file: $took s"
  cargo build --workspace --bins --tests --quiet # back to the built state, untimed
done
