#!/usr/bin/env bash
# LoRA fine-tuning, side by side on this machine: our candle backend
# (orchestrator-train-bench) vs Hugging Face PEFT on PyTorch CPU
# (deploy/bench/trainer/peft_train.py, venv built by setup.sh), on the same
# SmolLM2 GGUF (transformers dequantizes the same file), the same examples
# rendered with the same chat template, the same LoRA settings (rank 16,
# alpha 32, dropout 0.1, q_proj + v_proj, AdamW) and the same batches,
# 2 threads each, engines alternating. Prints one JSON line per run:
# tokens/s (every real token of every batch over the loop's wall time),
# peak resident memory of the process, and the threads it used.
#
# Threads: ours gets RAYON_NUM_THREADS=2 (matrix products on rayon's pool).
# PyTorch runs with its defaults: no OMP_* / MKL_* variable is set, and
# peft_train.py keeps torch's default intra-op count (the number of
# physical cores: 2 on the 2-core bench machine) unless it differs from 2,
# which it then sets to 2. Each JSON line reports "threads".
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
# Neither side inherits a thread or wait-policy setting from the caller.
unset OMP_NUM_THREADS MKL_NUM_THREADS OMP_WAIT_POLICY GOMP_SPINCOUNT CANDLE_NUM_THREADS
results=target/bench-trainer/results-${examples}.jsonl
: >"$results"
for round in $(seq "$rounds"); do
  echo "-- round $round: candle" >&2
  RAYON_NUM_THREADS=2 target/release/orchestrator-train-bench "${common[@]}" | tee -a "$results"
  echo "-- round $round: PEFT" >&2
  # stderr (load, per-epoch losses, CPU seconds: all printed outside the
  # timed loop) goes to the terminal; transformers' warnings are muted.
  HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error "$python" deploy/bench/trainer/peft_train.py \
    "${common[@]}" --threads 2 | tee -a "$results"
done

# The README's table and ratios, from the lines above.
"$python" - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {e: [r for r in runs if r["engine"] == e] for e in ("candle", "peft")}
for e, rs in by.items():
    print(json.dumps({"summary": e, "threads": sorted({r["threads"] for r in rs}),
                      "train_tokens": sorted({r["train_tokens"] for r in rs}),
                      "tokens_per_sec": [round(r["tokens_per_sec"]) for r in rs],
                      "peak_gib": [round(r["peak_rss_mib"] / 1024, 2) for r in rs]}))
c, p = by["candle"], by["peft"]
if c and p:
    speed = statistics.median(r["tokens_per_sec"] for r in c) / statistics.median(r["tokens_per_sec"] for r in p)
    mem = statistics.median(r["peak_rss_mib"] for r in c) / statistics.median(r["peak_rss_mib"] for r in p)
    print(json.dumps({"summary": "candle vs peft (medians)", "speed_ratio": round(speed, 2),
                      "memory_less_pct": round(100 * (1 - mem))}))
PY
