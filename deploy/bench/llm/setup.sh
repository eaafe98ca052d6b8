#!/usr/bin/env bash
# Builds the llama.cpp peers of the local inference benchmark:
#   target/bench-venv-llm             llama-cpp-python (llama_bench.py), and
#   target/llama-cpp/bin/llama-bench  llama.cpp's own benchmark tool
#                                     (llama_cpp_bench.sh),
# both from the same llama.cpp source: the copy vendored in the
# llama-cpp-python sdist pinned in requirements.txt (downloaded once into
# target/llama-cpp/src).
#
# Instruction set: the same one our kernels use. GGML_NATIVE stays OFF
# (-march=native builds once segfaulted at generation on an x86-64 machine)
# and each GGML_<ISA> switch is set from /proc/cpuinfo: AVX2/FMA/F16C/BMI2,
# AVX-VNNI, AVX-512 (F+CD+VL+DQ+BW) and its VBMI, VNNI and BF16 extensions
# when the CPU has them. LLAMA_CPP_CMAKE_ARGS, when set, replaces those
# switches (e.g. "-DGGML_NATIVE=ON" to try a native build).
#
# Idempotent: stamps holding the hash of requirements.txt and the cmake
# switches skip the (several-minute) builds; a new pin or other switches
# rebuild. Prints the switches in use on stderr.
set -euo pipefail
cd "$(dirname "$0")/../../.."

here=deploy/bench/llm
venv=target/bench-venv-llm
cpp=target/llama-cpp
pin="$(sed -n 's/^llama-cpp-python==\([^ ;#]*\).*/\1/p' "$here/requirements.txt")"
if [[ -z "$pin" ]]; then
  echo "setup.sh: $here/requirements.txt must pin llama-cpp-python==VERSION" >&2
  exit 1
fi

# The GGML switches matching this CPU.
ggml_args() {
  if [[ -n "${LLAMA_CPP_CMAKE_ARGS:-}" ]]; then
    echo "$LLAMA_CPP_CMAKE_ARGS"
    return
  fi
  local args="-DGGML_NATIVE=OFF"
  case "$(uname -m)" in
    x86_64 | amd64) ;;
    *) echo "$args"; return ;;
  esac
  local flags
  flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
  has() {
    local f
    for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done
  }
  switch() { # NAME CPUINFO_FLAG...
    local name="$1"; shift
    if has "$@"; then args+=" -D$name=ON"; else args+=" -D$name=OFF"; fi
  }
  local avx512=(avx512f avx512cd avx512vl avx512dq avx512bw)
  switch GGML_SSE42 sse4_2
  switch GGML_AVX avx
  switch GGML_AVX2 avx2
  switch GGML_BMI2 bmi2
  switch GGML_FMA fma
  switch GGML_F16C f16c
  switch GGML_AVX_VNNI avx_vnni
  switch GGML_AVX512 "${avx512[@]}"
  switch GGML_AVX512_VBMI "${avx512[@]}" avx512vbmi
  switch GGML_AVX512_VNNI "${avx512[@]}" avx512_vnni
  switch GGML_AVX512_BF16 "${avx512[@]}" avx512_bf16
  echo "$args"
}
ggml="$(ggml_args)"
echo "llama.cpp cmake switches: $ggml" >&2
want="$( (cat "$here/requirements.txt"; echo "$ggml") | sha256sum | cut -d' ' -f1)"
venv_stamp="$venv/.build.sha256"
bench_stamp="$cpp/bin/.build.sha256"
bench_isa="$cpp/bin/llama-bench.isa"
if [[ "$(cat "$venv_stamp" 2>/dev/null)" == "$want" &&
      "$(cat "$bench_stamp" 2>/dev/null)" == "$want" && -s "$bench_isa" ]]; then
  echo "llama.cpp peers up to date: $venv, $cpp/bin/llama-bench" >&2
  exit 0
fi
for tool in g++ make; do
  if ! command -v "$tool" >/dev/null; then
    echo "setup.sh needs $tool to build llama.cpp (Debian: apt-get install g++ make; pip brings cmake)" >&2
    exit 1
  fi
done
jobs="$(nproc 2>/dev/null || echo 2)"

if [[ "$(cat "$venv_stamp" 2>/dev/null)" != "$want" ]]; then
  echo "creating bench venv in $venv (builds llama.cpp, several minutes)" >&2
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -r <(grep -v '^llama-cpp-python' "$here/requirements.txt")
fi
pip=("$venv/bin/pip" --disable-pip-version-check)

# The sdist, and in it the llama.cpp source both peers are built from.
src="$cpp/src/llama_cpp_python-$pin"
sdist="$src.tar.gz"
if [[ ! -f "$sdist" ]]; then
  mkdir -p "$cpp/src"
  "${pip[@]}" download --quiet --no-deps --no-binary llama-cpp-python \
    -d "$cpp/src" "llama-cpp-python==$pin"
fi
if [[ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]]; then
  rm -rf "$src"
  tar -xzf "$sdist" -C "$cpp/src"
fi

# The venv's cmake; a cmake on PATH also spares scikit-build-core fetching one.
export PATH="$PWD/$venv/bin:$PATH"
export CMAKE_BUILD_PARALLEL_LEVEL="$jobs"

if [[ "$(cat "$venv_stamp" 2>/dev/null)" != "$want" ]]; then
  # pip wheel --no-cache-dir: pip's wheel cache would otherwise hand back a
  # wheel built with other switches. LLAVA_BUILD=OFF: the multimodal library
  # is not used (llama_cpp loads it lazily).
  wheels="$(mktemp -d "${TMPDIR:-/tmp}/llama-cpp-wheel.XXXXXX")"
  trap 'rm -rf "$wheels"' EXIT
  CMAKE_ARGS="$ggml -DLLAVA_BUILD=OFF" \
    "${pip[@]}" wheel --quiet --no-cache-dir --no-deps -w "$wheels" "$sdist"
  "${pip[@]}" install --quiet "$wheels"/llama_cpp_python-*.whl \
    -r "$here/requirements.txt"
  "$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode().strip())' >&2
  echo "$want" >"$venv_stamp"
  echo "bench venv ready: $venv" >&2
fi

if [[ "$(cat "$bench_stamp" 2>/dev/null)" != "$want" ]]; then
  echo "building llama-bench in $cpp (several minutes)" >&2
  build="$cpp/build"
  rm -rf "$build" "$cpp/bin"
  # shellcheck disable=SC2086 # $ggml is a list of switches
  cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF $ggml \
    >"$cpp/build.log" 2>&1 || { tail -n 30 "$cpp/build.log" >&2; exit 1; }
  # gcc 12 warns a lot on the AVX-512 intrinsics: the log keeps it all.
  cmake --build "$build" --target llama-bench -j "$jobs" >>"$cpp/build.log" 2>&1 ||
    { grep -E -A3 'error|Error' "$cpp/build.log" | tail -n 40 >&2; exit 1; }
  mkdir -p "$cpp/bin"
  cp "$build/bin/llama-bench" "$cpp/bin/llama-bench"
  echo "$want" >"$bench_stamp"
  echo "llama-bench ready: $cpp/bin/llama-bench" >&2
fi
# llama-bench does not print the instruction sets it was built for: record
# them from the CPU backend's compile definitions, in the binding's
# llama_print_system_info form ("AVX2 = 1 | AVX512 = 1 | ...").
defs="$(sed -n 's/^CXX_DEFINES = //p' \
  "$cpp/build/ggml/src/CMakeFiles/ggml-cpu.dir/flags.make" 2>/dev/null || true)"
isa="$(tr ' ' '\n' <<<"$defs" |
  sed -n 's/^-DGGML_\(SSE42\|AVX[A-Z0-9_]*\|F16C\|FMA\|BMI2\|AMX[A-Z0-9_]*\)$/\1 = 1/p' |
  paste -sd'|' - | sed 's/|/ | /g')"
echo "${isa:-unknown}" >"$bench_isa"
echo "llama-bench ISA: $(cat "$bench_isa")" >&2
