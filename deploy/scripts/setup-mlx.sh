#!/usr/bin/env bash
# Sets up what the `mlx` feature needs to build and run on Linux (the MLX
# CPU backend): cmake and libclang for the vendored mlx-sys, and MLX itself
# from the PyPI wheel `mlx[cpu]` in a venv at target/mlx-venv. Idempotent:
# whatever is in place already is left alone.
#
# Prints the environment the build needs, so
#   eval "$(bash deploy/scripts/setup-mlx.sh)"
# sets it in the calling shell. Progress goes to stderr.
# On macOS nothing is needed beyond Xcode's tools and cmake: mlx-sys builds
# MLX from source there (see README.md, "MLX backend").
set -euo pipefail
cd "$(dirname "$0")/../.."

mlx_version="0.32.2"
venv="$PWD/target/mlx-venv"

if [ "$(uname -s)" = "Darwin" ]; then
  echo "macOS: no setup needed; cargo build --features mlx builds MLX itself" >&2
  exit 0
fi

# Debian packages: cmake builds mlx-c, libclang lets bindgen read its headers.
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
# bindgen loads libclang.so itself; libclang-cpp (which other packages pull
# in) is a different library and does not count.
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1 ||
  missing+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]}" >&2
  $sudo apt-get update -qq >&2
  $sudo apt-get install -y -qq "${missing[@]}" >&2
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv" >&2
  python3 -m venv "$venv"
fi
installed="$("$venv/bin/python" -m pip show mlx 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "$installed" != "$mlx_version" ]; then
  echo "installing mlx[cpu]==$mlx_version" >&2
  "$venv/bin/python" -m pip install --quiet "mlx[cpu]==$mlx_version" >&2
fi

mlx="$("$venv/bin/python" -c 'import mlx; print(list(mlx.__path__)[0])')"
[ -f "$mlx/share/cmake/MLX/MLXConfig.cmake" ] || {
  echo "$mlx has no share/cmake/MLX: not an MLX wheel with C++ headers" >&2
  exit 1
}
echo "export MLX_DIR=$mlx/share/cmake/MLX"
# Binaries and tests load libmlx.so from here at run time.
echo "export LD_LIBRARY_PATH=$mlx/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
