#!/usr/bin/env bash
# Creates target/datagen-venv with Hugging Face `datasets`, the peer of the
# datagen benchmark (hf_datagen.py), pinned in requirements.txt (a complete
# lock, installed with --no-deps). Idempotent: a marker holding the hash of
# requirements.txt skips the install when the pins are unchanged; changed
# pins rebuild the venv from scratch. Downloads about 90 MB (pyarrow,
# pandas, numpy are most of it).
set -euo pipefail
cd "$(dirname "$0")/../../.."

here=deploy/bench/datagen
venv=target/datagen-venv
marker="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"

if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
  echo "datagen venv up to date: $venv" >&2
  exit 0
fi
if ! "${PYTHON:-python3}" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "python3 venv support missing: run 'apt-get update && apt-get install -y python3-venv'" >&2
  exit 1
fi

echo "creating datagen venv in $venv" >&2
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: -r "$here/requirements.txt"
# Fail here, not in the benchmark, if a needed library was left out.
"$venv/bin/python" -c 'import datasets, pyarrow; print("datasets", datasets.__version__, "pyarrow", pyarrow.__version__)' >&2
# Written last, so an interrupted install is redone next time.
echo "$want" >"$marker"
echo "datagen venv ready: $venv" >&2
