#!/usr/bin/env python3
"""Embedding throughput of sentence-transformers, the peer of our Rust embedder.

Prints one JSON line to stdout; everything else (progress, warnings) goes to
stderr. --write-embeddings also dumps the vectors as a reference fixture.
"""
import argparse
import json
import os
import sys
import time

# The weights are local; never let a missing file turn into a hub download.
os.environ["HF_HUB_OFFLINE"] = "1"
# The thread count of our side (RAYON_NUM_THREADS, 2 in bench-memory.sh),
# also for the OpenMP runtime torch starts at import; --threads sets torch's
# own counts below. bench-memory.sh exports it already; this covers a
# direct run.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402
import sentence_transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import (  # noqa: E402
    Normalize,
    Pooling,
    Transformer,
)


def load_model(path):
    # Built from explicit modules rather than modules.json, which names a
    # 2_Normalize directory the packaged weights do not ship. This is the same
    # pipeline SentenceTransformer(path) builds (outputs compared equal):
    # BERT truncated at 256 word-pieces, mean pooling, L2 normalisation.
    transformer = Transformer(path, max_seq_length=256)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


def read_texts(path):
    # Split on "\n" only: str.splitlines would also split inside texts on
    # U+2028, U+0085 and friends. Blank lines are skipped.
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [line.rstrip("\r") for line in lines if line.strip()]


def thread_pools():
    """The native thread pools loaded in this process and their sizes."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return sorted(f"{p.get('internal_api')}:{p.get('num_threads')}" for p in threadpool_info())


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="sentence-transformers model dir")
    ap.add_argument("--texts", required=True, help="UTF-8 file, one text per line")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-embeddings", metavar="OUT.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    model = load_model(args.model)
    texts = read_texts(args.texts)
    if not texts:
        sys.exit(f"no texts in {args.texts}")

    def encode(batch):
        return model.encode(
            batch, batch_size=args.batch_size, convert_to_numpy=True,
            show_progress_bar=False,
        )

    with torch.inference_mode():
        # First calls pay for lazy init and allocator growth; keep them untimed.
        encode(texts[: args.batch_size])
        start = time.perf_counter()
        embeddings = encode(texts)
        seconds = time.perf_counter() - start

    if args.write_embeddings:
        with open(args.write_embeddings, "w", encoding="utf-8") as f:
            # float(x) of a float32 is exact, so the printed double parses
            # back to the very same float32 (as f32 or via f64).
            json.dump(
                {
                    "model": "all-MiniLM-L6-v2",
                    "texts": texts,
                    "embeddings": [[float(x) for x in row] for row in embeddings],
                },
                f,
                ensure_ascii=False,
            )
            f.write("\n")

    # Word-pieces per text as the model sees them (special tokens included,
    # truncated at max_seq_length 256), outside the timed part.
    lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]

    print(json.dumps({
        "peer": "sentence-transformers",
        "avg_word_pieces": round(sum(lengths) / len(lengths), 3),
        "version": sentence_transformers.__version__,
        "torch": torch.__version__,
        "texts": len(texts),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "thread_pools": thread_pools(),
        "seconds": seconds,
        "embeddings_per_s": len(texts) / seconds,
    }))


if __name__ == "__main__":
    main()
