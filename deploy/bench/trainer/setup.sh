#!/usr/bin/env bash
# Creates target/bench-venv-trainer with CPU torch + transformers + peft, the
# peer of the LoRA fine-tuning benchmark (peft_train.py), pinned in
# requirements.txt. Idempotent: a marker holding the hash of requirements.txt
# and cuda_stubs.py skips the install.
#
# Why --no-deps and cuda_stubs.py: PyPI serves only the CUDA build of torch
# for Linux x86_64 (the 540 MB wheel), and it declares the CUDA 13 runtime as
# dependencies: cuda-toolkit, nvidia-cudnn/cublas/nccl/..., triton, about
# 2.3 GB more to download. Without them `import torch` fails, because
# libtorch_cpu/libtorch_cuda/libtorch_python link against libcudart,
# libcublas, libcudnn, ... even though a CPU run never calls them. So
# requirements.txt is a complete lock installed with --no-deps, and
# cuda_stubs.py compiles a tiny stub per missing CUDA library (every function
# fails; cudaGetDeviceCount reports no device) into the directory the torch
# wheel's RPATH already searches. torch.cuda.is_available() is then False.
set -euo pipefail
cd "$(dirname "$0")/../../.."

here=deploy/bench/trainer
venv=target/bench-venv-trainer
marker="$venv/.requirements.sha256"
want="$(cat "$here/requirements.txt" "$here/cuda_stubs.py" | sha256sum | cut -d' ' -f1)"

if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
  echo "bench venv up to date: $venv" >&2
  exit 0
fi
for tool in cc readelf; do
  if ! command -v "$tool" >/dev/null; then
    echo "setup.sh needs $tool to build the CUDA stub libraries (Debian: apt-get install gcc binutils)" >&2
    exit 1
  fi
done

echo "creating bench venv in $venv (downloads about 570 MB, a minute or two)" >&2
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
  -r "$here/requirements.txt"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$venv/bin/python" "$here/cuda_stubs.py" "$site"
"$venv/bin/python" -c '
import torch, transformers, peft, gguf
assert not torch.cuda.is_available()
x = torch.randn(8, 8, requires_grad=True)
(x @ x).sum().backward()
print("torch", torch.__version__, "transformers", transformers.__version__,
      "peft", peft.__version__, "(CPU)")'
echo "$want" >"$marker"
echo "bench venv ready: $venv" >&2
