"""The Hugging Face `datasets` peer of the datagen benchmark.

The same eight task families as shared/datagen/src/synthetic.rs (same
prompts, same value ranges, answers computed the same way, so the same text
sizes and the same room for repeats), put through the pipeline a `datasets`
user writes for it:

    Dataset.from_generator(gen)            -> Arrow cache on disk
      .filter(length bounds, empty answer, exact repeats)
      .train_test_split(test_size=0.05, seed=...)
      ["train"|"test"].to_json(path, lines=True)

in the same chat format as the orchestrator's export
({"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}).
Library defaults throughout (batched=False, writer/batch sizes, shuffle in
train_test_split, pandas' to_json options); --num-proc only sets num_proc of
from_generator and to_json (the filter keeps one process: its `seen` set
must see every example for the dedup to be global).

Prints one JSON line: {"bench": "datagen", "peer": "hf-datasets", ...}.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import resource
import sys
import time

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import datasets  # noqa: E402
from datasets import Dataset  # noqa: E402

# --- the synthetic source, as in shared/datagen/src/synthetic.rs

NAMES = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Fatima", "Goran", "Hana", "Ivan", "Jun",
         "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya"]
SURNAMES = ["Smith", "Okafor", "Novak", "Tanaka", "Garcia", "Haddad", "Kowalski", "Silva",
            "Müller", "Nguyen", "Rossi", "Patel"]
WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "ember", "harbor", "violet",
         "quartz", "meadow", "falcon", "lantern", "pepper", "glacier", "orbit", "saddle",
         "willow", "copper", "thunder", "canyon", "pixel", "raven", "silk", "anchor", "bamboo",
         "cactus", "dolphin", "eclipse", "fern", "garnet", "hazel", "iris", "jasmine", "kettle",
         "lemon", "marble", "nectar", "oasis", "pebble", "quill", "rocket", "sparrow", "tundra",
         "umbra", "velvet", "walnut", "yarrow", "zephyr", "acorn", "basil", "cobalt", "dune",
         "ermine", "fjord", "ginger", "heron", "indigo", "juniper", "kelp", "lilac", "mango",
         "nutmeg", "opal", "plum", "quince", "reef", "sage", "thistle", "urchin", "vortex", "wren",
         "yew", "zinc", "amber", "birch", "coral", "delta", "emerald", "flint", "gravel",
         "hollow", "ivory", "jade", "kiln", "lagoon", "mist", "nova", "onyx", "prairie", "ridge",
         "slate", "tide", "valley", "wharf", "summit"]
assert len(WORDS) == 96
CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Accra", "Hobart", "Tromsø",
          "Cusco", "Varna"]
UNITS = [
    ("kilometres", "metres", 1000.0, 0.0),
    ("kilograms", "grams", 1000.0, 0.0),
    ("hours", "minutes", 60.0, 0.0),
    ("inches", "centimetres", 2.54, 0.0),
    ("miles", "kilometres", 1.609344, 0.0),
    ("degrees Celsius", "degrees Fahrenheit", 1.8, 32.0),
    ("litres", "millilitres", 1000.0, 0.0),
    ("pounds", "kilograms", 0.45359237, 0.0),
]
WEEKDAYS = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"]
EPOCH = datetime.date(1970, 1, 1).toordinal()


def iso(days: int) -> str:
    return datetime.date.fromordinal(EPOCH + days).isoformat()


def shown(items) -> str:
    return ", ".join(map(str, items))


def display(value: float) -> str:
    """Rust's `{}` of an f64: the shortest repr, without a trailing `.0`."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def arithmetic(rng):
    a = rng.randrange(2, 100_000)
    b = rng.randrange(2, 10_000)
    op = rng.randrange(5)
    if op == 0:
        question, answer = f"What is {a} + {b}?", str(a + b)
    elif op == 1:
        question, answer = f"What is {a} \u2212 {b}?", str(a - b)
    elif op == 2:
        question, answer = f"What is {a} \u00d7 {b}?", str(a * b)
    elif op == 3:
        question = f"Divide {a} by {b}. Give the quotient and the remainder."
        answer = f"quotient {a // b}, remainder {a % b}"
    else:
        percent = rng.randrange(1, 100)
        question = f"What is {percent}% of {a}? Round to two decimals."
        answer = f"{a * percent / 100.0:.2f}"
    return "arithmetic", "Compute the answer. Reply with the result only.", question, answer


def unit_conversion(rng):
    value = rng.randrange(1, 1_000_000) / 100.0
    source, target, factor, offset = rng.choice(UNITS)
    return (
        "unit_conversion",
        f"Convert {source} to {target}. Round to two decimals and give the unit.",
        f"{display(value)} {source}",
        f"{value * factor + offset:.2f} {target}",
    )


def dates(rng):
    start = rng.randrange(80_000)
    delta = rng.randrange(1, 5_000)
    if rng.random() < 0.5:
        return (
            "dates",
            "Answer with a date in YYYY-MM-DD form.",
            f"What date is {delta} days after {iso(start)}?",
            iso(start + delta),
        )
    return (
        "dates",
        "Answer with the day of the week only.",
        f"Which day of the week is {delta} days after {iso(start)}?",
        WEEKDAYS[(start + delta) % 7],
    )


def lists(rng):
    length = rng.randrange(5, 12)
    numbers = [rng.randrange(-500, 1_000) for _ in range(length)]
    op = rng.randrange(4)
    if op == 0:
        return ("lists", "Sort the numbers in ascending order. Reply with the list only.",
                f"[{shown(numbers)}]", f"[{shown(sorted(numbers))}]")
    if op == 1:
        evens = [n for n in numbers if n % 2 == 0]
        return ("lists",
                "Keep only the even numbers, in their order. Reply with the list only.",
                f"[{shown(numbers)}]", f"[{shown(evens)}]")
    if op == 2:
        threshold = rng.randrange(500)
        above = sum(1 for n in numbers if n > threshold)
        return ("lists",
                f"How many numbers are greater than {threshold}? Reply with a number.",
                f"[{shown(numbers)}]", str(above))
    words = [rng.choice(WORDS) for _ in range(min(length, 8))]
    return ("lists",
            "Sort these words alphabetically and remove repeats. Reply with a comma-separated list.",
            ", ".join(words), ", ".join(sorted(set(words))))


def json_extraction(rng):
    order = rng.randrange(10_000, 1_000_000)
    customer = f"{rng.choice(NAMES)} {rng.choice(SURNAMES)}"
    items = rng.randrange(1, 40)
    cents = rng.randrange(100, 5_000_000)
    date = iso(rng.randrange(18_000, 21_000))
    city = rng.choice(CITIES)
    total = f"{cents / 100.0:.2f}"
    template = rng.randrange(3)
    if template == 0:
        text = (f"Order {order} was placed by {customer} on {date} for {items} items, "
                f"{total} EUR in all, shipped to {city}.")
    elif template == 1:
        text = (f"On {date}, {customer} from {city} bought {items} items (order #{order}) "
                f"and paid {total} EUR.")
    else:
        text = (f"Shipping note \u2014 city: {city}; customer: {customer}; order no. {order}; "
                f"date {date}; {items} items; total {total} EUR.")
    # serde_json's json!() without preserve_order: keys sorted, compact, UTF-8 as is.
    answer = json.dumps(
        {"order_id": order, "customer": customer, "date": date, "items": items,
         "total_eur": total, "city": city},
        ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return (
        "json_extraction",
        "Extract order_id, customer, date, items, total_eur (as a string) and city as one JSON object.",
        text,
        answer,
    )


def strings(rng):
    count = rng.randrange(3, 8)
    words = [rng.choice(WORDS) for _ in range(count)]
    phrase = " ".join(words)
    op = rng.randrange(4)
    if op == 0:
        return ("strings", "Reverse the characters of the text. Reply with the result only.",
                phrase, phrase[::-1])
    if op == 1:
        vowels = sum(1 for c in phrase if c in "aeiou")
        return ("strings",
                "How many vowels (a, e, i, o, u) does the text have? Reply with a number.",
                phrase, str(vowels))
    if op == 2:
        return ("strings",
                "Turn the text into snake_case in capital letters (words joined by underscores).",
                phrase, "_".join(words).upper())
    numbers = [rng.randrange(1, 10_000) for _ in range(count)]
    text = ", ".join(f"{w} {n}" for w, n in zip(words, numbers))
    return ("strings",
            "List every number in the text (as the regex \\d+ would find them), comma-separated.",
            text, shown(numbers))


def sql(rng):
    rows = [(rng.choice(NAMES), rng.randrange(18, 80), rng.choice(CITIES))
            for _ in range(rng.randrange(4, 9))]
    table = "\n".join(f"| {name} | {age} | {city} |" for name, age, city in rows)
    table_input = f"Table people:\n| name | age | city |\n{table}"
    threshold = rng.randrange(20, 70)
    if rng.random() < 0.5:
        names = sorted(name for name, age, _ in rows if age > threshold)
        return (
            "sql",
            f"Give the result of: SELECT name FROM people WHERE age > {threshold} ORDER BY name. "
            "One name per line; write (none) if empty.",
            table_input,
            "\n".join(names) if names else "(none)",
        )
    matching = [age for _, age, _ in rows if age > threshold]
    return (
        "sql",
        f"Give the result of: SELECT COUNT(*), SUM(age) FROM people WHERE age > {threshold}. "
        "Reply as: count, sum.",
        table_input,
        f"{len(matching)}, {sum(matching)}",
    )


def code_tracing(rng):
    start = rng.randrange(1_000)
    times = rng.randrange(2, 9)
    multiplier = rng.randrange(1, 6)
    add = rng.randrange(-50, 51)
    modulus = rng.randrange(7, 1_000)
    x = start
    if rng.random() < 0.5:
        for i in range(times):
            x = x * multiplier + i + add
        code = (f"x = {start}\nfor i in range({times}):\n"
                f"    x = x * {multiplier} + i + ({add})\nprint(x)")
    else:
        for i in range(times):
            x = (x * multiplier + add) % modulus + i
        code = (f"x = {start}\nfor i in range({times}):\n"
                f"    x = (x * {multiplier} + ({add})) % {modulus} + i\nprint(x)")
    return ("code_tracing", "What does this Python program print? Reply with the output only.",
            code, str(x))


FAMILIES = [arithmetic, unit_conversion, dates, lists, json_extraction, strings, sql,
            code_tracing]


def generate(shards, seed):
    """Examples of `shards` ([first, end) index ranges), in the chat format.

    One random generator per shard, seeded by (seed, shard start), so a
    shard is the same whichever process makes it (num_proc > 1 splits the
    shard list between processes)."""
    for first, end in shards:
        rng = random.Random(seed * 1_000_000_007 + first)
        family = rng.randrange
        for _ in range(first, end):
            _, instruction, text, answer = FAMILIES[family(8)](rng)
            prompt = f"{instruction}\n\n{text}" if text else instruction
            yield {"messages": [{"role": "user", "content": prompt},
                                {"role": "assistant", "content": answer}]}


# --- the filters, as Filters::default() in shared/datagen/src/lib.rs

MIN_CHARS, MAX_CHARS = 8, 16_384


def keep_filter():
    """A filter function that drops empty answers, examples out of the
    length bounds and exact repeats (prompt and answer with case and
    whitespace normalized, hashed), counting what it dropped."""
    seen: set[bytes] = set()
    dropped = {"empty": 0, "too_short": 0, "too_long": 0, "duplicate": 0}

    def keep(example) -> bool:
        user, assistant = example["messages"]
        prompt, answer = user["content"], assistant["content"]
        if not answer.strip():
            dropped["empty"] += 1
            return False
        # The user turn joins instruction and input with "\n\n".
        size = len(prompt) + len(answer) - (2 if "\n\n" in prompt else 0)
        if size < MIN_CHARS:
            dropped["too_short"] += 1
            return False
        if size > MAX_CHARS:
            dropped["too_long"] += 1
            return False
        normal = " ".join(prompt.lower().split()) + "\x1f" + " ".join(answer.lower().split())
        key = hashlib.blake2b(normal.encode(), digest_size=8).digest()
        if key in seen:
            dropped["duplicate"] += 1
            return False
        seen.add(key)
        return True

    return keep, dropped


def count_lines(path: str) -> int:
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-fraction", type=float, default=0.05)
    parser.add_argument("--shard-size", type=int, default=10_000,
                        help="examples per generator shard (as the orchestrator's default)")
    parser.add_argument("--num-proc", type=int, default=None,
                        help="num_proc of from_generator and to_json (default: the library's, one process)")
    parser.add_argument("--out", required=True, help="directory for the cache and the JSON lines")
    args = parser.parse_args()

    cache = os.path.join(args.out, "hf-cache")
    os.makedirs(cache, exist_ok=True)
    shards = [(first, min(first + args.shard_size, args.count))
              for first in range(0, args.count, args.shard_size)]
    keep, dropped = keep_filter()

    started = time.perf_counter()
    ds = Dataset.from_generator(generate, gen_kwargs={"shards": shards, "seed": args.seed},
                                cache_dir=cache, num_proc=args.num_proc)
    generated = time.perf_counter()
    kept = ds.filter(keep)
    filtered = time.perf_counter()
    split = kept.train_test_split(test_size=args.eval_fraction, seed=args.seed)
    split_done = time.perf_counter()
    paths = {}
    for name, part in (("train", split["train"]), ("eval", split["test"])):
        paths[name] = os.path.join(args.out, f"hf-{name}.jsonl")
        part.to_json(paths[name], lines=True, num_proc=args.num_proc)
    finished = time.perf_counter()

    train, evals = count_lines(paths["train"]), count_lines(paths["eval"])
    assert train == len(split["train"]) and evals == len(split["test"]), (train, evals)
    seconds = finished - started
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({
        "bench": "datagen",
        "peer": "hf-datasets",
        "datasets_version": datasets.__version__,
        "num_proc": args.num_proc or 1,
        "count": args.count,
        "examples": train + evals,
        "train": train,
        "eval": evals,
        "dropped": dropped,
        "seconds": round(seconds, 3),
        "examples_per_s": round((train + evals) / seconds, 1),
        "generate_seconds": round(generated - started, 3),
        "filter_seconds": round(filtered - generated, 3),
        "split_seconds": round(split_done - filtered, 3),
        "export_seconds": round(finished - split_done, 3),
        "train_bytes": os.path.getsize(paths["train"]),
        "eval_bytes": os.path.getsize(paths["eval"]),
        "peak_rss_mb": round(self_kb / 1024, 1),
        "children_peak_rss_mb": round(children_kb / 1024, 1),
    }), flush=True)


if __name__ == "__main__":
    sys.exit(main())
