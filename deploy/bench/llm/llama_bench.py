"""llama.cpp (llama-cpp-python) side of the local inference benchmark.

Same GGUF, same chat prompt, greedy, exactly --tokens new tokens (past the
end of turn, like the candle side), --threads threads, a --ctx token context
(4096, our side's). Like our side, it loads the model, runs --warmup untimed
generations (the same prompt and token count as a round), then --rounds timed
ones. Prints a JSON line per round with prompt and decode tokens/s, the
instruction sets llama.cpp was built with (`system_info`) and the process's
peak resident memory so far (`peak_rss_mb`: model, context and at least one
answered chat); with --tokenize, the token ids of a text instead.
"""

import argparse
import json
import resource
import sys
import time

import llama_cpp
from llama_cpp import Llama


def peak_rss_mb():
    """The process's peak resident set size, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def generate(llm, prompt, tokens):
    """One greedy generation of exactly `tokens` tokens from an empty cache:
    (tokens, seconds to the first token, seconds from it to the last)."""
    # reset() empties the cache: generate() would otherwise reuse the prompt
    # left from the previous round and skip its prefill.
    llm.reset()
    out = []
    started = time.perf_counter()
    first_at = None
    for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        if first_at is None:
            first_at = time.perf_counter()
        out.append(token)
        if len(out) >= tokens:
            break
    done = time.perf_counter()
    return out, first_at - started, done - first_at


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--tokenize")
    args = parser.parse_args()

    started = time.perf_counter()
    llm = Llama(model_path=args.model, n_ctx=args.ctx, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    load_s = time.perf_counter() - started
    if args.tokenize is not None:
        ids = llm.tokenize(args.tokenize.encode(), add_bos=False, special=True)
        print(json.dumps({"ids": ids}, separators=(",", ":")))
        return

    system_info = llama_cpp.llama_print_system_info().decode().strip()
    text = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
            "trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
            f"{args.prompt}<|im_end|>\n<|im_start|>assistant\n")
    prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
    for _ in range(args.warmup):
        generate(llm, prompt, args.tokens)
    for round_ in range(1, args.rounds + 1):
        out, prompt_s, decode_s = generate(llm, prompt, args.tokens)
        print(json.dumps({
            "engine": "llama.cpp",
            "round": round_,
            "load_s": load_s,
            "prompt_tokens": len(prompt),
            "prompt_tok_s": len(prompt) / prompt_s,
            "generated_tokens": len(out),
            "decode_tok_s": (len(out) - 1) / decode_s,
            "text": llm.detokenize(out).decode(errors="replace")[:120],
            "warmup_rounds": args.warmup,
            "n_ctx": llm.n_ctx(),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "system_info": system_info,
        }), flush=True)


if __name__ == "__main__":
    main()
