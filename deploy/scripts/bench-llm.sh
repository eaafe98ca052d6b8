#!/usr/bin/env bash
# Local inference and workflow benchmarks, side by side on this machine:
#   tokens/s: our local provider (each `kernels` setting) vs llama.cpp,
#     through its Python binding and its own llama-bench (both built by
#     deploy/bench/llm/setup.sh with the instruction sets this CPU has), on
#     the same SmolLM2 GGUF, same chat prompt, greedy, the same number of new
#     tokens, 2 threads each, one untimed warm-up generation each; prompt
#     (prefill) and decode speed, the text, and each side's peak memory;
#   fidelity: each `kernels` setting's next-token distributions against the
#     unquantized model (mean KL divergence, same top token);
#   memory: an API process serving the model, before and after one chat;
#   tokenizer: token ids of sample texts under both tokenizers;
#   workflows/s: the API in embedded mode with a trivially fast model.
# Usage: bench-llm.sh [NEW_TOKENS] [WORKFLOWS]  (default: 128 500)
set -euo pipefail
cd "$(dirname "$0")/../.."

tokens="${1:-128}"
workflows="${2:-500}"
models="${ORCH_MODELS_DIR:-./models}"
gguf="$models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
python=target/bench-venv-llm/bin/python
prompt="Write a short story about a dragon who learns to paint."

bash deploy/scripts/fetch-models.sh
bash deploy/bench/llm/setup.sh
cargo build --release --quiet -p orchestrator-tests --bin orchestrator-llm-bench
cargo build --release --quiet -p orchestrator-api
bench=target/release/orchestrator-llm-bench

echo "== generation, ${tokens} new tokens, 2 threads (alternating rounds)" >&2
for round in 1 2 3; do
  for kernels in native fast precise; do
    RAYON_NUM_THREADS=2 "$bench" generate --model "$gguf" --prompt "$prompt" \
      --tokens "$tokens" --rounds 1 --kernels "$kernels"
  done
  "$python" deploy/bench/llm/llama_bench.py --model "$gguf" --prompt "$prompt" \
    --tokens "$tokens" --rounds 1 --threads 2 2>/dev/null
done
prompt_tokens="$("$bench" generate --model "$gguf" --prompt "$prompt" --tokens 1 --rounds 1 \
  | "$python" -c 'import json,sys; print(json.loads(sys.stdin.readline())["prompt_tokens"])')"
echo "== llama.cpp's llama-bench: pp${prompt_tokens} and tg${tokens}, 2 threads, 5 repetitions" >&2
bash deploy/bench/llm/llama_cpp_bench.sh "$gguf" "$tokens" "$prompt_tokens" 2 5

echo "== fidelity against the unquantized model" >&2
"$bench" fidelity --model "$gguf"

echo "== memory of an API process serving smollm2, one chat of ${tokens} tokens" >&2
"$bench" api-memory --api target/release/orchestrator-api --models "$models" \
  --prompt "$prompt" --tokens "$tokens"

echo "== tokenizer: same ids as llama.cpp?" >&2
while IFS= read -r text; do
  ours="$("$bench" tokenize --model "$gguf" --text "$text")"
  theirs="$("$python" deploy/bench/llm/llama_bench.py --model "$gguf" --tokenize "$text" 2>/dev/null)"
  if [[ "$ours" == "$theirs" ]]; then verdict=same; else verdict=DIFFERENT; fi
  echo "{\"tokenizer\": \"$verdict\", \"text\": $(printf '%s' "$text" | "$python" -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}"
done <<'TEXTS'
Hello, world! How are you today?
The year 2026 has 365 days; 12 months and 52 weeks.
<|im_start|>user
fn main() { println!("{}", 1 + 2); }
Ünïcödé, emoji 🐉 and   three spaces.
TEXTS

echo "== workflows/s, ${workflows} research workflows (3 tasks, fan-in), trivially fast model" >&2
"$bench" workflows --api target/release/orchestrator-api --count "$workflows"
