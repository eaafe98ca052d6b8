#!/usr/bin/env bash
# Creates target/bench-venv-llm with llama-cpp-python, the peer of the local
# inference benchmark, pinned in requirements.txt. Idempotent: a marker
# holding the hash of requirements.txt skips the (several-minute) build.
#
# Why the CMAKE_ARGS: built with llama.cpp's default native flags the
# library segfaults at generation on some x86-64 machines; the portable
# AVX2/FMA/F16C build runs everywhere this project does.
set -euo pipefail
cd "$(dirname "$0")/../../.."

here=deploy/bench/llm
venv=target/bench-venv-llm
marker="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"

if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
  echo "bench venv up to date: $venv" >&2
  exit 0
fi
for tool in g++; do
  if ! command -v "$tool" >/dev/null; then
    echo "setup.sh needs $tool to build llama-cpp-python (Debian: apt-get install g++; pip brings cmake)" >&2
    exit 1
  fi
done

echo "creating bench venv in $venv (builds llama.cpp, several minutes)" >&2
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
  -r "$here/requirements.txt"
"$venv/bin/python" -c 'import llama_cpp'
echo "$want" >"$marker"
echo "bench venv ready: $venv" >&2
