#!/usr/bin/env python3
"""LoRA fine-tuning benchmark peer: trains a LoRA adapter on a GGUF model with
transformers + peft on the CPU and prints ONE JSON line of measurements.

The model is loaded from the GGUF (transformers dequantizes it to float32 and
un-permutes q/k into the HF layout). Each example is the chat-template prompt
(user turn + generation prompt) followed by response + "<|im_end|>"; the loss
covers the response tokens only. tokens_per_sec counts the non-pad tokens of
every step over the wall time of the training loop alone (load excluded).

Run with target/bench-venv-trainer (deploy/bench/trainer/setup.sh).
"""
import argparse
import json
import os
import random
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

END_OF_TURN = "<|im_end|>"


def rss_mib():
    """Current resident set size of this process, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", required=True, help="path to the .gguf model file")
    p.add_argument("--data", required=True, help='JSONL of {"prompt": ..., "response": ...}')
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2,
                   help="threads the other engine uses; PyTorch's own default is kept "
                        "when it already equals this, set to it otherwise")
    p.add_argument("--save-adapter", metavar="DIR", help="save the adapter (safetensors) here")
    return p.parse_args()


def load_examples(path):
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
                raise SystemExit(f"{path}:{n}: needs string fields prompt and response")
            examples.append(row)
    if not examples:
        raise SystemExit(f"{path}: no examples")
    return examples


def encode(tokenizer, example, max_len):
    """Returns (input_ids, labels): prompt tokens masked with -100."""
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": example["prompt"]}],
        add_generation_prompt=True, tokenize=True)
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):  # BatchEncoding
        prompt_ids = prompt_ids["input_ids"]
    prompt_ids = list(prompt_ids)
    response_ids = tokenizer(example["response"] + END_OF_TURN,
                             add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + response_ids)[:max_len]
    labels = ([-100] * len(prompt_ids) + response_ids)[:max_len]
    return ids, labels


def collate(batch, pad_id):
    """Right-pads a list of (ids, labels) into tensors."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(labs)] = torch.tensor(labs)
        mask[row, :len(ids)] = 1
    return input_ids, mask, labels


def main():
    args = parse_args()
    hf_logging.disable_progress_bar()
    # PyTorch's default intra-op thread count is the number of physical cores
    # (or OMP_NUM_THREADS / MKL_NUM_THREADS when set). On the 2-core bench
    # machine (1 thread per core) that is already 2, the same as our side's
    # RAYON_NUM_THREADS=2, so nothing is changed. Only where the default
    # differs (more cores, or a variable set) is it set to the other side's
    # count, so that both sides use the same number of threads.
    default_threads = torch.get_num_threads()
    if default_threads != args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    model_dir, gguf_name = os.path.split(os.path.abspath(args.gguf))
    tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_name,
                                                 dtype=torch.float32)
    load_rss = rss_mib()
    model.config.use_cache = False
    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                      target_modules=["q_proj", "v_proj"], bias="none",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=args.lr, weight_decay=0.0)

    examples = [encode(tokenizer, ex, args.max_seq_len) for ex in load_examples(args.data)]
    if all(lab == -100 for _, labels in examples for lab in labels):
        raise SystemExit("every response is truncated away: raise --max-seq-len")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    print(f"loaded {args.gguf}: {trainable} trainable parameters, {len(examples)} examples, "
          f"rss {load_rss:.0f} MiB; torch threads {torch.get_num_threads()} "
          f"(default here {default_threads}"
          f"{'' if default_threads == args.threads else ', set to match the other engine'})",
          file=sys.stderr)

    order_rng = random.Random(args.seed)
    model.train()
    losses, train_tokens, steps = [], 0, 0
    # The timed loop does the training step and nothing else: no prints, no
    # evaluation, no per-step .item(); losses stay detached tensors until after.
    cpu_start = os.times()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = list(range(len(examples)))
        order_rng.shuffle(order)
        for first in range(0, len(order), args.batch_size):
            batch = [examples[i] for i in order[first:first + args.batch_size]]
            input_ids, mask, labels = collate(batch, pad_id)
            out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.detach())
            train_tokens += int(mask.sum())
            steps += 1
    seconds = time.perf_counter() - start
    cpu_end = os.times()
    losses = [loss.item() for loss in losses]
    per_epoch = -(-len(examples) // args.batch_size)
    for epoch in range(args.epochs):
        print(f"epoch {epoch + 1}/{args.epochs}: last loss "
              f"{losses[min(len(losses), (epoch + 1) * per_epoch) - 1]:.4f}", file=sys.stderr)
    cpu = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    # Well under threads x seconds means the threads waited: another process
    # held the cores, and tokens_per_sec understates this machine.
    print(f"training loop: {seconds:.1f} s wall, {cpu:.1f} s CPU on {torch.get_num_threads()} threads",
          file=sys.stderr)

    if args.save_adapter:
        model.save_pretrained(args.save_adapter, safe_serialization=True)

    print(json.dumps({
        "engine": "peft",
        "tokens_per_sec": round(train_tokens / seconds, 2),
        "train_tokens": train_tokens,
        "seconds": round(seconds, 3),
        "steps": steps,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "load_rss_mib": round(load_rss, 1),
        "threads": torch.get_num_threads(),
        "threads_default": default_threads,
        "cpu_seconds": round(cpu, 3),
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
