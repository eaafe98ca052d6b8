#!/usr/bin/env bash
# LoRA fine-tuning, side by side on this machine: our candle backend
# (orchestrator-train-bench) vs Hugging Face PEFT on PyTorch CPU
# (deploy/bench/trainer/peft_train.py, venv built by setup.sh), on the same
# SmolLM2 GGUF (transformers dequantizes the same file), the same examples
# rendered with the same chat template, the same LoRA settings (rank 16,
# alpha 32, dropout 0.1, q_proj + v_proj, AdamW) and the same batches,
# 2 threads each, engines alternating. Prints one JSON line per run:
# tokens/s (every real token of every batch over the loop's wall time) and
# peak resident memory of the process.
# Usage: bench-trainer.sh [EXAMPLES] [EPOCHS] [ROUNDS]  (default: 32 2 2)
set -euo pipefail
cd "$(dirname "$0")/../.."

examples="${1:-32}"
epochs="${2:-2}"
rounds="${3:-2}"
models="${ORCH_MODELS_DIR:-./models}"
gguf="$models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
python=target/bench-venv-trainer/bin/python
data=target/bench-trainer/qa${examples}.jsonl

bash deploy/scripts/fetch-models.sh
bash deploy/bench/trainer/setup.sh
cargo build --release --quiet -p orchestrator-tests --bin orchestrator-train-bench
mkdir -p target/bench-trainer
"$python" deploy/bench/trainer/sample_data.py "$examples" >"$data"

common=(--gguf "$gguf" --data "$data" --epochs "$epochs" --batch-size 4
  --max-seq-len 128 --lr 1e-4 --rank 16 --alpha 32 --dropout 0.1 --seed 0)
echo "== LoRA training: ${examples} examples, ${epochs} epochs, batch 4, 2 threads" >&2
for round in $(seq "$rounds"); do
  RAYON_NUM_THREADS=2 target/release/orchestrator-train-bench "${common[@]}"
  OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 "$python" deploy/bench/trainer/peft_train.py \
    "${common[@]}" --threads 2 2>/dev/null
done
