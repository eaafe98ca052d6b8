#!/usr/bin/env bash
# Creates target/bench-venv-memory with the Python peers of the memory
# benchmarks (sentence-transformers, faiss-cpu), pinned in requirements.txt.
# Idempotent: a marker holding the hash of requirements.txt skips the install
# when the pins are unchanged; changed pins rebuild the venv from scratch.
#
# Why torch is installed with --no-deps: PyPI's Linux x86_64 torch wheel is
# a CUDA build and only PyPI is reachable here (the CPU-only wheels live on
# PyTorch's own index). Its declared dependencies come to ~5.4 GB installed.
# Plain `--no-deps torch` does not work either: libtorch_cpu.so itself links
# libcudart/libcupti, and libtorch_cuda.so (linked by libtorch.so) links
# cublas, cudnn, cufft, cusparse, nccl, ... so `import torch` fails without
# them. requirements.txt therefore lists exactly the CUDA libraries named in
# torch's DT_NEEDED entries (they are found via torch's RPATH and never used
# on a CPU), and leaves out triton, cusolver and the other CUDA extras that
# only GPU or torch.compile paths load: ~4.0 GB instead of ~5.4 GB.
# Everything goes in with --no-deps, so `pip check` complaining about the
# missing triton/cusolver/cuda-bindings is expected.
set -euo pipefail
cd "$(dirname "$0")/../../.."

here=deploy/bench/memory
venv=target/bench-venv-memory
marker="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"

if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
  echo "bench venv up to date: $venv" >&2
  exit 0
fi

echo "creating bench venv in $venv (downloads ~2.5 GB)" >&2
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: -r "$here/requirements.txt"
# Fail here, not in the first benchmark, if a needed library was left out.
"$venv/bin/python" -c 'import torch, faiss, sentence_transformers'
# Written last, so an interrupted install is redone next time.
echo "$want" >"$marker"
echo "bench venv ready: $venv" >&2
