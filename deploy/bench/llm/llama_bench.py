"""llama.cpp (llama-cpp-python) side of the local inference benchmark.

Same GGUF, same chat prompt, greedy, exactly --tokens new tokens (past the
end of turn, like the candle side), --threads threads. Prints JSON lines with
prompt and decode tokens/s, and with --tokenize the token ids of a text.
"""

import argparse
import json
import time

from llama_cpp import Llama


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokenize")
    args = parser.parse_args()

    started = time.perf_counter()
    llm = Llama(model_path=args.model, n_ctx=2048, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    load_s = time.perf_counter() - started
    if args.tokenize is not None:
        ids = llm.tokenize(args.tokenize.encode(), add_bos=False, special=True)
        print(json.dumps({"ids": ids}, separators=(",", ":")))
        return

    text = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
            "trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
            f"{args.prompt}<|im_end|>\n<|im_start|>assistant\n")
    prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
    for round_ in range(1, args.rounds + 1):
        llm.reset()
        out = []
        started = time.perf_counter()
        first_at = None
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            if first_at is None:
                first_at = time.perf_counter()
            out.append(token)
            if len(out) >= args.tokens:
                break
        done = time.perf_counter()
        print(json.dumps({
            "engine": "llama.cpp",
            "round": round_,
            "load_s": load_s,
            "prompt_tokens": len(prompt),
            "prompt_tok_s": len(prompt) / (first_at - started),
            "generated_tokens": len(out),
            "decode_tok_s": (len(out) - 1) / (done - first_at),
            "text": llm.detokenize(out).decode(errors="replace")[:120],
        }))


if __name__ == "__main__":
    main()
