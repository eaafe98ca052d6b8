#!/usr/bin/env python3
"""Vector search with faiss-cpu, the peer of our Rust vector index.

Exact (IndexFlatIP) and HNSW (IndexHNSWFlat, inner product) search over raw
little-endian float32 files of L2-normalised vectors. The exact results are
written as ground truth (raw little-endian uint32, nq x k) so the Rust side can
score its own recall against the same answers. Prints one JSON line.
"""
import argparse
import json
import os
import time

# The thread count of our side (RAYON_NUM_THREADS, 2 in bench-memory.sh)
# for the OpenMP and BLAS runtimes faiss loads; --threads sets faiss' own
# OpenMP count below. bench-memory.sh exports them already; this covers a
# direct run.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import faiss
import numpy as np

EF_SEARCH = [16, 32, 64, 96, 128, 192, 256]
M = 32
EF_CONSTRUCTION = 128  # the same as the Rust index (shared/memory/src/vector/index.rs)


def load(path, dim):
    data = np.fromfile(path, dtype="<f4")
    if data.size % dim:
        raise SystemExit(f"{path}: {data.size} floats is not a multiple of dim {dim}")
    return np.ascontiguousarray(data.reshape(-1, dim), dtype=np.float32)


def search_single(index, queries, k):
    # One query per call, as a server answers them: this is the latency-bound
    # figure (faiss does not parallelise a single query across threads).
    ids = np.empty((len(queries), k), dtype=np.int64)
    start = time.perf_counter()
    for i in range(len(queries)):
        ids[i] = index.search(queries[i : i + 1], k)[1][0]
    return time.perf_counter() - start, ids


def recall(ids, truth, k):
    hits = sum(len(set(a[:k]) & set(b[:k])) for a, b in zip(ids, truth))
    return hits / (len(truth) * k)


def thread_pools():
    """The native thread pools loaded in this process and their sizes."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return sorted(f"{p.get('internal_api')}:{p.get('num_threads')}" for p in threadpool_info())


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gt-out", required=True, help="flat ids, raw LE uint32 nq x k")
    args = ap.parse_args()

    faiss.omp_set_num_threads(args.threads)
    base = load(args.base, args.dim)
    queries = load(args.queries, args.dim)
    k = args.k
    if len(base) < k:
        raise SystemExit(f"need at least k={k} base vectors, got {len(base)}")

    flat = faiss.IndexFlatIP(args.dim)
    flat.add(base)
    flat.search(queries[:8], k)  # page the vectors in before timing
    single_s, _ = search_single(flat, queries, k)
    start = time.perf_counter()
    truth = flat.search(queries, k)[1]
    batch_s = time.perf_counter() - start
    truth.astype("<u4").tofile(args.gt_out)
    del flat  # a second copy of the vectors: 1.5 GB at 1M x 384

    hnsw = faiss.IndexHNSWFlat(args.dim, M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = EF_CONSTRUCTION
    start = time.perf_counter()
    hnsw.add(base)
    build_s = time.perf_counter() - start

    runs = []
    for ef in EF_SEARCH:
        hnsw.hnsw.efSearch = ef
        seconds, ids = search_single(hnsw, queries, k)
        runs.append({
            "ef_search": ef,
            "qps_single": len(queries) / seconds,
            "recall_at_10": recall(ids, truth, 10),
        })

    print(json.dumps({
        "peer": "faiss-cpu",
        "version": faiss.__version__,
        "n": len(base),
        "nq": len(queries),
        "threads": faiss.omp_get_max_threads(),
        "thread_pools": thread_pools(),
        "flat": {"qps_single": len(queries) / single_s, "qps_batch": len(queries) / batch_s},
        "hnsw": {"build_s": build_s, "M": M, "ef_construction": EF_CONSTRUCTION, "runs": runs},
    }))


if __name__ == "__main__":
    main()
