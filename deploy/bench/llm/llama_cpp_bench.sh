#!/usr/bin/env bash
# llama.cpp's own llama-bench on a GGUF, the second llama.cpp peer of the
# local inference benchmark (the first is llama_bench.py, through the Python
# binding). Both are built by setup.sh from the same llama.cpp source with
# the same instruction sets.
#
# Usage: llama_cpp_bench.sh MODEL NEW_TOKENS PROMPT_TOKENS [THREADS] [REPETITIONS]
#   (defaults: 2 threads, 3 repetitions)
# Runs llama-bench's two tests, each after llama-bench's own warm-up run:
#   pp<PROMPT_TOKENS>: prefill of PROMPT_TOKENS tokens in one batch;
#   tg<NEW_TOKENS>:    NEW_TOKENS tokens decoded one at a time, from an empty
#                      context;
# and prints one JSON line per test: prompt_tok_s (pp) or decode_tok_s (tg),
# the mean over the repetitions, with their standard deviation, and `isa`,
# the instruction sets the build used.
set -euo pipefail
cd "$(dirname "$0")/../../.."

if [[ $# -lt 3 ]]; then
  sed -n 's/^# \{0,1\}//; 7,8p' "$0" >&2
  exit 2
fi
model="$1" tokens="$2" prompt_tokens="$3" threads="${4:-2}" reps="${5:-3}"

bash deploy/bench/llm/setup.sh
bench=target/llama-cpp/bin/llama-bench
isa="$(cat target/llama-cpp/bin/llama-bench.isa)"

"$bench" -m "$model" -t "$threads" -p "$prompt_tokens" -n "$tokens" \
  -r "$reps" -o json |
  ISA="$isa" target/bench-venv-llm/bin/python -c '
import json, os, sys
for test in json.load(sys.stdin):
    prompt = test["n_gen"] == 0
    name = "pp%d" % test["n_prompt"] if prompt else "tg%d" % test["n_gen"]
    print(json.dumps({
        "engine": "llama-bench",
        "test": name,
        "prompt_tokens": test["n_prompt"],
        "generated_tokens": test["n_gen"],
        "prompt_tok_s" if prompt else "decode_tok_s": test["avg_ts"],
        "stddev_tok_s": test["stddev_ts"],
        "repetitions": len(test["samples_ts"]),
        "threads": test["n_threads"],
        "model_type": test["model_type"],
        "build_commit": test["build_commit"],
        "cpu_info": test["cpu_info"],
        "isa": os.environ["ISA"],
    }))
'
