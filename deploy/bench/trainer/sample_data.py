#!/usr/bin/env python3
"""Writes N short, deterministic question/answer pairs as the JSONL that
peft_train.py reads: sample_data.py N > data.jsonl"""
import json
import sys

COUNTRIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"),
             ("Canada", "Ottawa"), ("Peru", "Lima"), ("Norway", "Oslo"),
             ("Egypt", "Cairo"), ("Chile", "Santiago")]


def examples(n):
    for i in range(n):
        if i % 2 == 0:
            country, capital = COUNTRIES[(i // 2) % len(COUNTRIES)]
            yield {"prompt": f"What is the capital of {country}?",
                   "response": f"The capital of {country} is {capital}."}
        else:
            a, b = 3 + i, 7 + 2 * i
            yield {"prompt": f"What is {a} plus {b}?",
                   "response": f"{a} plus {b} equals {a + b}."}


if __name__ == "__main__":
    for row in examples(int(sys.argv[1]) if len(sys.argv) > 1 else 16):
        print(json.dumps(row))
